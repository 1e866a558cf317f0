#!/usr/bin/env bash
# Installs what e2e/tests/proxyless_grpc.rs needs: a Python virtualenv with
# grpcio (gRPC's own xDS client, the one a proxyless service would run) and
# grpcio-tools (to compile e2e/proto/echo.proto at test time), both from
# PyPI. Needs python3 with the venv module (Debian's python3-venv, installed
# through scripts/apt-install.sh when missing).
#
# The virtualenv lives in $SANE_GRPCIO_VENV, default
# ${XDG_CACHE_HOME:-$HOME/.cache}/sane-mesh/grpcio-<version>; re-running
# does nothing once it works. Prints the venv's python as the last line.
set -euo pipefail

GRPCIO_VERSION="1.78.0"
venv="${SANE_GRPCIO_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/sane-mesh/grpcio-$GRPCIO_VERSION}"
python="$venv/bin/python"

works() {
  "$python" -c 'import grpc, grpc_tools.protoc' >/dev/null 2>&1
}

# Test binaries run in parallel and may call this at once: one installs,
# the others wait for it.
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9

if [ -x "$python" ] && works; then
  echo "grpcio-test-deps: $venv has grpcio $GRPCIO_VERSION" >&2
  echo "$python"
  exit 0
fi

if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  "$(dirname "$0")/apt-install.sh" grpcio-test-deps python3-venv >&2
fi
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
python3 -m venv "$venv" >&2
"$python" -m pip install --quiet --disable-pip-version-check \
  "grpcio==$GRPCIO_VERSION" "grpcio-tools==$GRPCIO_VERSION" >&2
works
echo "grpcio-test-deps: installed grpcio $GRPCIO_VERSION into $venv" >&2
echo "$python"
