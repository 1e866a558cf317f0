#!/usr/bin/env bash
# Installs what e2e/tests/replicas.rs (control-plane replicas on etcd) needs:
# the `etcd` server binary (Debian's `etcd-server` package, etcd 3.4) and
# `etcdctl` (`etcd-client` package). Debian/Ubuntu only (apt-get); needs
# root. Does nothing when etcd is already on PATH; installs through
# scripts/apt-install.sh, which keeps the package's own service from
# starting: the tests run their own members on loopback.
set -euo pipefail

if command -v etcd >/dev/null 2>&1; then
  echo "etcd-test-deps: $(command -v etcd) is installed"
  exit 0
fi
"$(dirname "$0")/apt-install.sh" etcd-test-deps etcd-server etcd-client
command -v etcd >/dev/null
