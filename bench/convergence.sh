#!/usr/bin/env bash
# Control-plane push convergence: the time from an API write to the last ACK,
# with 20 real proxies connected (median and max over 5 route changes).
# Runs the real binaries through the e2e test that measures it, and writes
# bench/results/convergence.txt (machine, command, figures).
#
#   bench/convergence.sh            # debug build (what CI runs)
#   bench/convergence.sh --release  # release build
set -euo pipefail
cd "$(dirname "$0")/.."
SANE_WRITE_BENCH=1 cargo test "$@" -p sane-e2e --test control_plane route_change -- --nocapture 2>&1 |
    grep -E "^convergence:|wrote " || true
cat bench/results/convergence.txt
