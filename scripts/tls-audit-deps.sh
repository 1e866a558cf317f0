#!/usr/bin/env bash
# Installs what e2e/tests/tls_audit.rs needs: sslscan, an independent TLS
# scanner (Debian package `sslscan`, built on its own OpenSSL with the old
# protocols enabled, so it can tell whether a server accepts them).
# Debian/Ubuntu only (apt-get); needs root. Installs through
# scripts/apt-install.sh.
set -euo pipefail

if command -v sslscan >/dev/null 2>&1; then
  echo "tls-audit-deps: sslscan is installed"
  exit 0
fi
exec "$(dirname "$0")/apt-install.sh" tls-audit-deps sslscan
