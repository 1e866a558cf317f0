#!/usr/bin/env bash
# Installs what e2e/tests/observability.rs needs to scrape the sidecars with
# a real Prometheus server: the `prometheus` binary (Debian's `prometheus`
# package). Debian/Ubuntu only (apt-get); needs root. Does nothing when
# prometheus is already on PATH, and runs `apt-get update` only when the
# install fails for want of package lists. The package's own service is not
# started: the test runs its own server on loopback.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1; then
  echo "prometheus-test-deps: $(command -v prometheus) is installed"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "prometheus-test-deps: prometheus is missing, and installing needs root" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "prometheus-test-deps: prometheus is missing, and there is no apt-get here" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Keep the package's service from starting in containers without systemd.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod +x "$policy"
  created_policy=1
fi
cleanup() { if [ "$created_policy" -eq 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

echo "prometheus-test-deps: installing prometheus"
if ! apt-get install -y --no-install-recommends prometheus; then
  apt-get update
  apt-get install -y --no-install-recommends prometheus
fi
command -v prometheus >/dev/null
