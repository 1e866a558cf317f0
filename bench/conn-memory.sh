#!/usr/bin/env bash
# Memory per idle keep-alive client connection of one sidecar (issue 9's
# "RSS <= 40 MB with 1 000 connections"): builds the release proxy and the
# `conn-memory` tool, runs it (RSS and PSS idle, with the connections, after
# closing them), then, with --heaptrack, runs it again under heaptrack and
# prints the allocation sites holding the most memory at the peak.
#
#   bench/conn-memory.sh                  # 1 000 connections, 1 worker
#   bench/conn-memory.sh --heaptrack      # plus the heaptrack breakdown
#   bench/conn-memory.sh -- --conns 5000  # arguments after -- go to the tool
#   bench/conn-memory.sh -- --endpoints 10,1000,10000   # idle RSS by config size
#
# heaptrack comes from Debian's package (installed with apt-get when
# missing; that needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
heaptrack=0
tool_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --heaptrack) heaptrack=1 ;;
    --) shift; tool_args=("$@"); break ;;
    *) echo "conn-memory.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
cargo build --release -p sane-proxy --bin sane-proxy
cargo build --release -p sane-bench --bin conn-memory
# The connections plus the proxy's own sockets.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
target/release/conn-memory "${tool_args[@]}"
if [ "$heaptrack" -eq 1 ]; then
  if ! command -v heaptrack >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
      echo "conn-memory.sh: heaptrack is missing and cannot be installed here (needs root and apt-get)" >&2
      exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends heaptrack
  fi
  out=/tmp/sane-conn-memory/heaptrack
  rm -f "$out".*
  # --wrap takes the rest of the command line: the tool's own arguments first.
  target/release/conn-memory "${tool_args[@]}" --wrap heaptrack -o "$out"
  file=$(ls "$out".* | head -n1)
  # Peak memory by allocation site (the peak is with the connections open).
  heaptrack_print -f "$file" --print-peaks 1 --print-allocators 0 \
    --print-temporary 0 --print-leaks 0 --peak-limit 15 \
    --sub-peak-limit 4 | sed -n '/PEAK MEMORY CONSUMERS/,$p' | grep -v '^ *in /'
fi
