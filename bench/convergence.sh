#!/usr/bin/env bash
# Control-plane push convergence: the time from an API write to the last ACK,
# with N real proxies connected (median and max over 5 route changes).
# Runs the real binaries through the e2e test that measures it, and writes
# bench/results/convergence.txt (20 proxies) or convergence-<N>.txt.
#
#   bench/convergence.sh                     # 20 proxies, debug build (what CI runs)
#   bench/convergence.sh --proxies 100       # 100 proxies
#   bench/convergence.sh --release           # release build (other args go to cargo)
set -euo pipefail
cd "$(dirname "$0")/.."
proxies=20
cargo_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --proxies) proxies="$2"; shift 2 ;;
        *) cargo_args+=("$1"); shift ;;
    esac
done
file=bench/results/convergence.txt
if [ "$proxies" != 20 ]; then file="bench/results/convergence-$proxies.txt"; fi
# 100 proxies hold a few hundred descriptors in the test process.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
SANE_BENCH_PROXIES="$proxies" SANE_WRITE_BENCH=1 \
    cargo test "${cargo_args[@]}" -p sane-e2e --test control_plane route_change -- --nocapture 2>&1 |
    grep -E "^convergence:|wrote |panicked|FAILED" || true
cat "$file"
