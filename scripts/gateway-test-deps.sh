#!/usr/bin/env bash
# Installs what e2e/tests/gateway.rs needs: curl (the outside client that
# checks the certificate served per SNI and follows redirects). Debian/Ubuntu
# only (apt-get); needs root. Does nothing when curl is already there, and
# runs `apt-get update` only when an install fails for want of package lists.
set -euo pipefail

if command -v curl >/dev/null 2>&1; then
  echo "gateway-test-deps: curl is installed"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "gateway-test-deps: missing curl, and installing needs root" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "gateway-test-deps: missing curl, and there is no apt-get here" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "gateway-test-deps: installing curl"
if ! apt-get install -y --no-install-recommends curl ca-certificates; then
  apt-get update
  apt-get install -y --no-install-recommends curl ca-certificates
fi
