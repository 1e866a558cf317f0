#!/usr/bin/env bash
# The control plane under a simulated fleet (issue 20): builds the release
# control plane and the `fleet` tool, then for N = 100, 1 000 and 5 000
# proxies, state of the world and delta, opens N real ADS streams (the
# proxy's own xDS client code, no data plane) against a fresh control plane
# with N/10 services (3 endpoints and a route each), and measures one route
# change and one endpoint change to the last ACK, the control plane's CPU
# per change and its RSS (see src/bin/fleet.rs). Writes
# bench/results/fleet.md (or the given --out).
#
#   bench/fleet.sh                                  # everything (~15 min)
#   bench/fleet.sh -- --proxies 1000 --protocols delta --out /tmp/f.md
#
# Replicas (issue 21): `--topologies file,etcd:3` measures one control plane
# on its file store and 3 replicas on a 3-member etcd (installed by
# scripts/etcd-test-deps.sh when missing) in one run:
#
#   bench/fleet.sh -- --proxies 100 --protocols sotw --topologies file,etcd:3 \
#       --out bench/results/replicas.md
#
# FLEET_PROFILE=debug builds and runs the debug build instead (a smoke run on
# a busy machine, where the release build takes too long).
set -euo pipefail
cd "$(dirname "$0")/.."
tool_args=()
if [ "${1:-}" = "--" ]; then shift; tool_args=("$@"); fi
case " ${tool_args[*]:-} " in
    *etcd:*) scripts/etcd-test-deps.sh ;;
esac
# One invocation: the tool links the proxy and control-plane crates, so
# both share the release build of their dependencies.
profile="${FLEET_PROFILE:-release}"
case "$profile" in
    release) cargo build --release -p sane-control-plane --bin sane-control-plane -p sane-bench --bin fleet ;;
    debug) cargo build -p sane-control-plane --bin sane-control-plane -p sane-bench --bin fleet ;;
    *) echo "FLEET_PROFILE=$profile: expected release or debug" >&2; exit 2 ;;
esac
# 5 000 streams are 5 000 sockets in the tool and in the control plane (the
# tool also raises its soft limit to the hard one; the control plane
# inherits it).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
has_out=false
for a in "${tool_args[@]}"; do [ "$a" = "--out" ] && has_out=true; done
if ! $has_out; then tool_args+=(--out bench/results/fleet.md); fi
exec "${CARGO_TARGET_DIR:-target}/$profile/fleet" "${tool_args[@]}"
