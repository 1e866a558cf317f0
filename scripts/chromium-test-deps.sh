#!/usr/bin/env bash
# Installs what e2e/tests/ui.rs needs: a headless browser (Debian's
# `chromium` package) to load the control plane's /ui page. Debian/Ubuntu
# only (apt-get); needs root. Does nothing when chromium is already there;
# installs through scripts/apt-install.sh.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
  echo "chromium-test-deps: $(command -v chromium) is installed"
  exit 0
fi
"$(dirname "$0")/apt-install.sh" chromium-test-deps chromium fonts-dejavu-core
command -v chromium >/dev/null
