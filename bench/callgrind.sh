#!/usr/bin/env bash
# Instructions per HTTP request of each sane hop, counted by callgrind.
#
# Wall-clock figures on a shared, loaded machine are noise; the number of
# instructions a hop executes per request is not. This script runs the same
# two-hop topology as `bench/run` (bench/peers/sane-{a,b}.yaml):
#
#   h2load --h1 ─▶ hop A (outbound HTTP) ══HTTP/2 over mTLS══▶ hop B (inbound, STRICT) ─▶ nginx `200 ok`
#
# (PRESERVE_HTTP1=1 gives hop A a destination policy with
# `peer_protocol: preserve`: HTTP/1.1 between the hops.)
#
# with both sane-proxy processes (`--workers 1`) under
# `valgrind --tool=callgrind`, certificates from a sane-control-plane CA
# (the control plane is not measured), every port picked at run time.
#
# How it counts: the proxies start with instrumentation off
# (`--instr-atstart=no`: startup, key generation and the CSR run at native
# speed and are not counted). WARMUP requests open the connections and fill
# the pools; then `callgrind_control -i on` + `-z` start counting on both
# hops, N keep-alive requests run (h2load, C connections), and
# `callgrind_control -d` dumps the counts. A second window of the same
# length with no traffic is dumped too (timers, keep-alive pings: the
# idle baseline). Instructions per request = (Ir of the load window - Ir of
# the idle window) / N. Callgrind serialises the threads of a process, and
# counts instructions (Ir), not time: the figure is the same on a quiet or
# a loaded machine, up to small differences in how many requests share one
# wake-up (run it twice to see the spread; C=1 keeps it smallest). Only
# user-space instructions are counted: the kernel's work in the proxies'
# syscalls (read, write, epoll) is not.
#
# Prints per hop the instructions per request, the idle baseline, and the
# top TOP functions by self and by inclusive Ir (callgrind_annotate).
# Dumps are kept in OUT for `callgrind_annotate` / kcachegrind.
#
# MEMORY=1 runs the same topology natively instead (no valgrind) and
# prints each hop's VmRSS and PSS (/proc/PID/status, smaps_rollup): right
# after the first request went through (as `bench/run`'s idle figure), after
# WARMUP requests, and hop A's while CONNS (1 000) idle keep-alive client
# connections are open (one request each), SETTLE seconds after each step.
# It is how an allocator's memory cost is weighed against its instructions.
#
# TRACING=closed|reachable gives both sidecars a `Telemetry` resource
# sampling every request (`sampling_ratio: 1.0`) to an OTLP/gRPC collector:
# `closed` a loopback port nothing listens on (every export is refused),
# `reachable` a `sane-otlp-sink` (counts what it receives). The span export
# task runs in the proxy, so its instructions are counted too. The script
# then prints the sidecars' `sane_trace_spans_total` and what the sink
# received.
#
# Usage: bench/callgrind.sh            # builds release sane-proxy + control plane
#        N=2000 WARMUP=200 C=1 TOP=15 NO_BUILD=1 OUT=target/callgrind bench/callgrind.sh
#        MEMORY=1 CONNS=1000 SETTLE=2 NO_BUILD=1 bench/callgrind.sh
#        TRACING=closed bench/callgrind.sh     # or TRACING=reachable
#        SYSCALLS=1 C=32 N=20000 NO_BUILD=1 bench/callgrind.sh
#
# SYSCALLS=1 runs the topology natively too and counts, with `perf stat` on
# the kernel's syscall tracepoints, the system calls each hop makes per
# request (read/write/… and epoll_wait) over N requests after WARMUP: the
# kernel work callgrind does not see (each call on loopback also carries
# the peer's TCP receive path).
# ORDER=FILE writes the text-ordering file the release link lays the
# proxy's code out by (proxy/build.rs, `--symbol-ordering-file`): both hops
# run under callgrind from their first instruction (`--demangle=no`, so
# names are the binary's symbols); every function that ran while WARMUP + N
# requests went through (and the admin port's /metrics and /ready answered)
# is listed first, hottest first, then those that ran only at startup. Code that never runs in a sidecar is left after them, so
# its pages are neither mapped in beside the code that runs (fault-around)
# nor between it in the instruction cache. Regenerate it after large code
# changes (a function missing from the list is only placed after the listed
# ones): ORDER=proxy/text-order.txt bench/callgrind.sh
# Needs: valgrind, nginx, h2load (nghttp2-client), curl. Loopback only.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-2000}
WARMUP=${WARMUP:-200}
C=${C:-1}
TOP=${TOP:-15}
OUT=${OUT:-$ROOT/target/callgrind}
BIN=${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release} # where sane-control-plane (and by default sane-proxy) are
PROXY=${PROXY:-$BIN/sane-proxy} # another sane-proxy binary, e.g. a copy of the "before" build
# PRELOAD: a malloc to LD_PRELOAD into both proxies (e.g. libjemalloc.so.2),
# to weigh an allocator before linking one in.
TRACING=${TRACING:-}
TOKEN=sane-callgrind-token
case "$TRACING" in
    "" | closed | reachable) ;;
    *) echo "callgrind.sh: TRACING must be empty, closed or reachable" >&2; exit 1 ;;
esac

for tool in valgrind callgrind_control callgrind_annotate nginx h2load curl python3; do
    command -v "$tool" >/dev/null || { echo "callgrind.sh: $tool not found (apt-get install valgrind nginx nghttp2-client curl python3)" >&2; exit 1; }
done

if [[ -z "${NO_BUILD:-}" ]]; then
    # The sidecar on its own, last (bench/text-layout.sh says why).
    (cd "$ROOT" && cargo build --release -p sane-control-plane --bin sane-control-plane -p sane-e2e --bin sane-otlp-sink \
        && cargo build --release -p sane-proxy --bin sane-proxy)
fi

WORK=$(mktemp -d /tmp/sane-callgrind.XXXXXX)
mkdir -p "$OUT" "$WORK"/{run,logs,tokens}
rm -f "$OUT"/hop-*.out*
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$OUT/logs" && cp -r "$WORK/logs" "$OUT/logs" # the processes' output, for a failed run
    rm -rf "$WORK"
}
trap cleanup EXIT

# A free loopback port for nginx (which cannot report the one it bound).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# listening, until_ok, sane_a_yaml, sane_b_yaml
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

# --- backend: nginx answering `200 ok` (as bench/peers/backend.conf) ---
BACKEND_PORT=$(free_port)
mkdir -p "$WORK/run/backend"
cat >"$WORK/backend.conf" <<EOF
worker_processes 1;
pid $WORK/run/backend/nginx.pid;
error_log $WORK/logs/backend.error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $WORK/run/backend/body; proxy_temp_path $WORK/run/backend/proxy;
    fastcgi_temp_path $WORK/run/backend/fcgi; uwsgi_temp_path $WORK/run/backend/uwsgi; scgi_temp_path $WORK/run/backend/scgi;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$BACKEND_PORT;
        location / { default_type text/plain; return 200 "ok"; }
    }
}
EOF
nginx -p "$WORK/run" -e "$WORK/logs/backend.error.log" -c "$WORK/backend.conf" -g 'daemon off;' \
    >"$WORK/logs/backend.log" 2>&1 &
PIDS+=($!)
until_ok "http://127.0.0.1:$BACKEND_PORT/"

# --- control plane: the CA and the workload tokens ---
"$BIN/sane-control-plane" --insecure-plaintext-loopback --xds-addr 127.0.0.1:0 --api-addr 127.0.0.1:0 \
    --data-dir "$WORK/cp" --api-token "$TOKEN" >"$WORK/logs/cp.log" 2>&1 &
PIDS+=($!)
CP_XDS=$(listening "$WORK/logs/cp.log" xds)
CP_API=$(listening "$WORK/logs/cp.log" api)
for sa in bench-a bench-b; do
    curl -sf -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        -d "{\"namespace\":\"default\",\"service_account\":\"$sa\"}" "http://$CP_API/api/v1/tokens" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["token"], end="")' >"$WORK/tokens/$sa.token"
done

# --- the OTLP collector (TRACING=closed|reachable) ---
TELEMETRY=
SINK_PID=
if [[ -n "$TRACING" ]]; then
    if [[ "$TRACING" == reachable ]]; then
        "$BIN/sane-otlp-sink" --addr 127.0.0.1:0 >"$WORK/logs/otlp-sink.log" 2>&1 &
        SINK_PID=$!
        PIDS+=("$SINK_PID")
        COLLECTOR=$(listening "$WORK/logs/otlp-sink.log" otlp)
    else
        COLLECTOR=127.0.0.1:$(free_port) # bound and closed again: nothing listens
    fi
    TELEMETRY="  telemetry:
    - { name: bench, tracing: { endpoint: \"http://$COLLECTOR\", sampling_ratio: 1.0 } }"
fi

# --- the two hops under callgrind ---
GRIND_PID=
grind() { # name config; sets GRIND_PID (valgrind runs the proxy in its own pid)
    if [[ -n "${MEMORY:-}${SYSCALLS:-}" ]]; then
        LD_PRELOAD="${PRELOAD:-}" "$PROXY" --config "$2" --workers 1 >"$WORK/logs/$1.log" 2>&1 &
    elif [[ -n "${ORDER:-}" ]]; then
        valgrind --tool=callgrind --instr-atstart=yes --demangle=no --callgrind-out-file="$OUT/$1.out" \
            "$PROXY" --config "$2" --workers 1 >"$WORK/logs/$1.log" 2>&1 &
    else
        LD_PRELOAD="${PRELOAD:-}" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/$1.out" \
            "$PROXY" --config "$2" --workers 1 >"$WORK/logs/$1.log" 2>&1 &
    fi
    GRIND_PID=$!
    PIDS+=("$GRIND_PID")
}

sane_b_yaml "$BACKEND_PORT" "$TELEMETRY" >"$WORK/sane-b.yaml"
grind hop-b "$WORK/sane-b.yaml"
PID_B=$GRIND_PID
B_ADDR=$(listening "$WORK/logs/hop-b.log" inbound)

POLICY=
if [[ -n "${PRESERVE_HTTP1:-}" ]]; then
    POLICY="  policies:
    - { name: backend, service: backend, peer_protocol: preserve }"
fi
sane_a_yaml "$BACKEND_PORT" "${B_ADDR##*:}" "$TELEMETRY
$POLICY" >"$WORK/sane-a.yaml"
grind hop-a "$WORK/sane-a.yaml"
PID_A=$GRIND_PID
A_ADDR=$(listening "$WORK/logs/hop-a.log" outbound)
until_ok "http://$A_ADDR/"

load() { # requests
    local log="$WORK/logs/h2load.log"
    h2load --h1 -n "$1" -c "$C" -H ':authority: backend' "http://$A_ADDR/" >"$log" 2>&1
    if ! grep -q "requests: $1 total, $1 started, $1 done, $1 succeeded" "$log"; then
        echo "callgrind.sh: not every request succeeded:" >&2
        cat "$log" >&2
        return 1
    fi
}

if [[ -n "${ORDER:-}" ]]; then
    for pid in "$PID_A" "$PID_B"; do callgrind_control -d startup "$pid" >/dev/null; done
    load "$((WARMUP + N))"
    # What runs in a deployed sidecar besides requests: Prometheus scrapes
    # and readiness probes on the admin port.
    for hop in a b; do
        admin=$(sed -n 's/^listening name=admin addr=//p' "$WORK/logs/hop-$hop.log" | head -n1)
        for _ in 1 2 3; do
            curl -sf -m 10 "http://$admin/metrics" >/dev/null
            curl -sf -m 10 "http://$admin/ready" >/dev/null
        done
    done
    for pid in "$PID_A" "$PID_B"; do callgrind_control -d load "$pid" >/dev/null; done
    # Self Ir per function of the proxy binary in each dump, from
    # callgrind_annotate's table rows: "Ir (pct)  file:function [object]".
    costs() { # files...
        for f in "$@"; do callgrind_annotate --threshold=100 "$f" 2>/dev/null; done |
            python3 -c '
import os, re, sys
binary = "/" + os.path.basename(sys.argv[1])
row = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+\S*?:(\S+) \[(.*)\]$")
ir = {}
for line in sys.stdin:
    m = row.match(line.rstrip("\n"))
    if m and m.group(3).endswith(binary):
        ir[m.group(2)] = ir.get(m.group(2), 0) + int(m.group(1).replace(",", ""))
for name, n in sorted(ir.items(), key=lambda kv: -kv[1]):
    print(n, name)
' "$PROXY"
    }
    costs "$OUT"/hop-?.out.2 >"$WORK/load.txt"
    costs "$OUT"/hop-?.out.1 >"$WORK/startup.txt"
    {
        echo "# Text layout of sane-proxy's release build (proxy/build.rs): written by"
        echo "# ORDER=<this file> bench/callgrind.sh; first the functions that ran per"
        echo "# request (hottest first), then those that ran only at startup."
        awk '{ print $2 }' "$WORK/load.txt"
        awk 'NR == FNR { seen[$2] = 1; next } !seen[$2] { print $2 }' "$WORK/load.txt" "$WORK/startup.txt"
    } >"$ORDER"
    echo "callgrind.sh: $(wc -l <"$WORK/load.txt") functions ran per request, $(($(grep -vc '^#' "$ORDER") - $(wc -l <"$WORK/load.txt"))) more at startup: $ORDER"
    exit 0
fi

if [[ -n "${MEMORY:-}" ]]; then
    CONNS=${CONNS:-1000}
    SETTLE=${SETTLE:-2}
    mem() { # pid: "RSS PSS" in MiB
        local rss pss
        rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$1/status")
        pss=$(awk '/^Pss:/ { print $2 }' "/proc/$1/smaps_rollup")
        awk -v r="$rss" -v p="$pss" 'BEGIN { printf "%.1f %.1f", r / 1024, p / 1024 }'
    }
    row() { # label
        local a b
        read -r -a a <<<"$(mem "$PID_A")"
        read -r -a b <<<"$(mem "$PID_B")"
        printf '| %s | %s | %s | %s | %s |\n' "$1" "${a[0]}" "${a[1]}" "${b[0]}" "${b[1]}"
    }
    echo "memory (MiB), $PROXY${PRELOAD:+ with LD_PRELOAD=$PRELOAD}"
    echo "| | hop A RSS | hop A PSS | hop B RSS | hop B PSS |"
    echo "|---|---|---|---|---|"
    sleep "$SETTLE" # allow-sleep: a measurement interval, not a readiness wait
    row "idle (first request through)"
    load "$WARMUP"
    sleep "$SETTLE" # allow-sleep: a measurement interval, not a readiness wait
    row "after $WARMUP requests"
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    # CONNS keep-alive connections to hop A, one request each, held open
    # by a python process while the memory is read.
    : >"$WORK/logs/conns.log"
    python3 - "$A_ADDR" "$CONNS" >"$WORK/logs/conns.log" 2>&1 <<'PY' &
import socket, sys, time
addr, n = sys.argv[1], int(sys.argv[2])
host, port = addr.rsplit(":", 1)
conns = []
for i in range(n):
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n")
    got = b""
    while not got.endswith(b"ok"):
        chunk = s.recv(1024)
        if not chunk:
            sys.exit(f"connection {i} closed before the reply")
        got += chunk
    conns.append(s)
print("opened", flush=True)
while True:
    time.sleep(3600)  # holds the connections until killed
PY
    HOLDER=$!
    PIDS+=("$HOLDER")
    deadline=$((SECONDS + 120))
    until grep -q opened "$WORK/logs/conns.log"; do
        if ((SECONDS > deadline)) || ! kill -0 "$HOLDER" 2>/dev/null; then
            echo "callgrind.sh: the $CONNS connections did not open:" >&2
            cat "$WORK/logs/conns.log" >&2
            exit 1
        fi
        sleep 0.2
    done
    sleep "$SETTLE" # allow-sleep: a measurement interval, not a readiness wait
    row "hop A holding $CONNS idle client connections"
    exit 0
fi

if [[ -n "${SYSCALLS:-}" ]]; then
    command -v perf >/dev/null || { echo "callgrind.sh: SYSCALLS=1 needs perf (apt-get install linux-perf)" >&2; exit 1; }
    EVENTS=${EVENTS:-read,readv,recvfrom,recvmsg,write,writev,sendto,sendmsg,epoll_wait,epoll_pwait,futex,madvise,mmap,munmap,mprotect,brk}
    load "$WARMUP"
    perf_pids=()
    for hop in a b; do
        pid=$PID_A
        [[ $hop == b ]] && pid=$PID_B
        perf stat -x, -e "$(sed 's/\([a-z_]*\)/syscalls:sys_enter_\1/g' <<<"$EVENTS"),page-faults" \
            -p "$pid" -o "$WORK/perf-$hop.csv" &
        perf_pids+=($!)
    done
    # perf attaches asynchronously: wait until both have written their
    # header line (or the first sample) before the load starts.
    deadline=$((SECONDS + 30))
    until [[ -s "$WORK/perf-a.csv" && -s "$WORK/perf-b.csv" ]] || ((SECONDS > deadline)); do sleep 0.1; done
    load "$N"
    kill -INT "${perf_pids[@]}"
    wait "${perf_pids[@]}" 2>/dev/null || true
    echo "syscalls per request: $N HTTP/1.1 keep-alive requests over $C connection(s) after $WARMUP warm-up"
    printf '%-14s %10s %10s\n' syscall "hop A" "hop B"
    for ev in ${EVENTS//,/ }; do
        a=$(awk -F, -v e="syscalls:sys_enter_$ev" '$3 == e { print $1 }' "$WORK/perf-a.csv")
        b=$(awk -F, -v e="syscalls:sys_enter_$ev" '$3 == e { print $1 }' "$WORK/perf-b.csv")
        [[ "${a:-0}${b:-0}" =~ ^[0]*$ ]] && continue
        awk -v e="$ev" -v a="${a:-0}" -v b="${b:-0}" -v n="$N" 'BEGIN { printf "%-14s %10.2f %10.2f\n", e, a / n, b / n }'
    done
    # Not a system call: the page faults (memory the allocator gave back
    # and touches again is faulted in anew).
    a=$(awk -F, '$3 == "page-faults" { print $1 }' "$WORK/perf-a.csv")
    b=$(awk -F, '$3 == "page-faults" { print $1 }' "$WORK/perf-b.csv")
    awk -v a="${a:-0}" -v b="${b:-0}" -v n="$N" 'BEGIN { printf "%-14s %10.2f %10.2f\n", "(page faults)", a / n, b / n }'
    exit 0
fi

load "$WARMUP"
callgrind_control -i on "$PID_A" >/dev/null
callgrind_control -i on "$PID_B" >/dev/null
callgrind_control -z "$PID_A" >/dev/null
callgrind_control -z "$PID_B" >/dev/null
start=$SECONDS
load "$N"
window=$((SECONDS - start + 1))
callgrind_control -d load "$PID_A" >/dev/null
callgrind_control -d load "$PID_B" >/dev/null
# The idle baseline: as long as the load window, no traffic.
sleep "$window" # allow-sleep: an idle window of the load window's length, not a readiness wait
callgrind_control -d idle "$PID_A" >/dev/null
callgrind_control -d idle "$PID_B" >/dev/null

# Ir total of a dump file.
total() { sed -n 's/^summary: *//p; s/^totals: *//p' "$1" | head -n1 | awk '{print $1}'; }

# The first TOP function lines of callgrind_annotate's table.
top() { # file [option]
    callgrind_annotate --threshold=100 ${2:+"$2"} "$1" 2>/dev/null |
        sed 's/ *\[[^]]*\]$//; s/\.\/[^ ]*\/\([^/ ]*\.[cS]\):/\1:/; s/???://' |
        awk -v top="$TOP" '/file:function/ { table = 1; getline; next } table && NF && n < top { print; n++ }'
}

echo "callgrind: $N HTTP/1.1 keep-alive requests over $C connection(s) after $WARMUP warm-up, load window ${window}s${TRACING:+, tracing to a $TRACING collector}"
printf '%-6s %16s %14s %14s\n' hop "Ir (load)" "Ir (idle)" "Ir/request"
for hop in a b; do
    files=("$OUT/hop-$hop.out".*)
    load_file=${files[0]}
    idle_file=${files[1]}
    l=$(total "$load_file")
    i=$(total "$idle_file")
    printf '%-6s %16d %14d %14d\n' "$hop" "$l" "$i" $(((l - i) / N))
done
for hop in a b; do
    files=("$OUT/hop-$hop.out".*)
    echo
    echo "=== hop $hop: top $TOP by self Ir (${files[0]}) ==="
    top "${files[0]}"
    echo "=== hop $hop: top $TOP by inclusive Ir ==="
    top "${files[0]}" --inclusive=yes
done
if [[ -n "$TRACING" ]]; then
    echo
    echo "=== spans (sane_trace_spans_total of each hop, whole run incl. warm-up) ==="
    for hop in a b; do
        admin=$(sed -n 's/^listening name=admin addr=//p' "$WORK/logs/hop-$hop.log" | head -n1)
        echo "hop $hop: $(curl -s -m 10 "http://$admin/metrics" | sed -n 's/^sane_trace_spans_total{result="\([a-z]*\)"} \(.*\)/\1=\2/p' | tr '\n' ' ')"
    done
    if [[ -n "$SINK_PID" ]]; then
        kill -TERM "$SINK_PID"
        wait "$SINK_PID" || true
        echo "sink: $(grep '^spans received=' "$WORK/logs/otlp-sink.log" || echo 'no count')"
    fi
fi
