#!/usr/bin/env bash
# Installs what e2e/tests/gateway.rs needs: curl (the outside client that
# checks the certificate served per SNI and follows redirects). Debian/Ubuntu
# only (apt-get); needs root. Does nothing when curl is already there;
# installs through scripts/apt-install.sh.
set -euo pipefail

if command -v curl >/dev/null 2>&1; then
  echo "gateway-test-deps: curl is installed"
  exit 0
fi
exec "$(dirname "$0")/apt-install.sh" gateway-test-deps curl ca-certificates
