#!/usr/bin/env bash
# Installs what e2e/tests/observability.rs needs to scrape the sidecars with
# a real Prometheus server: the `prometheus` binary (Debian's `prometheus`
# package). Debian/Ubuntu only (apt-get); needs root. Does nothing when
# prometheus is already on PATH; installs through scripts/apt-install.sh,
# which keeps the package's own service from starting: the test runs its
# own server on loopback.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1; then
  echo "prometheus-test-deps: $(command -v prometheus) is installed"
  exit 0
fi
"$(dirname "$0")/apt-install.sh" prometheus-test-deps prometheus
command -v prometheus >/dev/null
