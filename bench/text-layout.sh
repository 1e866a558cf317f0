#!/usr/bin/env bash
# Checks that a release sane-proxy was laid out by proxy/text-order.txt:
# prints how many of the file's functions the binary has under the same
# symbol names, and fails below 90 %.
#
# Why it can fail: a Rust symbol name carries a hash of its crate's build
# metadata, which includes the features of every crate below it. A build
# that also selects other packages (`cargo build --release --bins`, or one
# `cargo build -p sane-proxy -p sane-control-plane ...`) unifies their
# dependencies' features (axum's, tracing's `log`, sane-certs' `testing`),
# every hash changes, lld finds about half of the listed functions, and the
# idle sidecar maps ≈ 3.5 MiB more text (12.4 instead of 8.9 MiB RSS,
# measured 2026-12-06). The sidecar's release binary is built on its own:
#
#   cargo build --release -p sane-proxy --bin sane-proxy
#
# Usage: bench/text-layout.sh [BIN]   (default target/release/sane-proxy)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${1:-$ROOT/target/release/sane-proxy}"
ORDER="$ROOT/proxy/text-order.txt"
command -v nm >/dev/null || { echo "text-layout.sh: nm not found (apt-get install binutils)" >&2; exit 1; }
listed=$(grep -v '^#' "$ORDER" | sort -u)
total=$(printf '%s\n' "$listed" | grep -c .)
found=$(comm -12 <(printf '%s\n' "$listed") <(nm "$BIN" | awk '{print $NF}' | sort -u) | grep -c . || true)
pct=$(( found * 100 / total ))
echo "text layout: $found of $total functions of proxy/text-order.txt found in $BIN ($pct %)"
if (( pct < 90 )); then
    echo "text-layout.sh: $BIN is not laid out by proxy/text-order.txt: build it on its own" >&2
    echo "  (cargo build --release -p sane-proxy --bin sane-proxy), or regenerate the file" >&2
    echo "  (ORDER=proxy/text-order.txt bench/callgrind.sh)" >&2
    exit 1
fi
