#!/usr/bin/env bash
# Registry write throughput against registry size (issue 18): builds the
# release control plane and the `registry-writes` tool, then writes 10 000
# services through the API with 8 clients and prints throughput, latency
# and the write rate at the start vs the end (see the tool's docs).
#
#   bench/registry-writes.sh                          # 10 000 services, 8 clients
#   bench/registry-writes.sh -- --services 1000 --out /tmp/w.md
set -euo pipefail
cd "$(dirname "$0")/.."
tool_args=()
if [ "${1:-}" = "--" ]; then shift; tool_args=("$@"); fi
cargo build --release -p sane-control-plane --bin sane-control-plane
cargo run --release -p sane-bench --bin registry-writes -- "${tool_args[@]}"
