#!/usr/bin/env bash
# Installs what e2e/tests/tls_audit.rs needs: sslscan, an independent TLS
# scanner (Debian package `sslscan`, built on its own OpenSSL with the old
# protocols enabled, so it can tell whether a server accepts them).
# Debian/Ubuntu only (apt-get); needs root. Runs `apt-get update` only when
# the install fails for want of package lists.
set -euo pipefail

if command -v sslscan >/dev/null 2>&1; then
  echo "tls-audit-deps: sslscan is installed"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "tls-audit-deps: sslscan is missing, and installing it needs root" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "tls-audit-deps: sslscan is missing, and there is no apt-get here" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "tls-audit-deps: installing sslscan"
if ! apt-get install -y --no-install-recommends sslscan; then
  apt-get update
  apt-get install -y --no-install-recommends sslscan
fi
