#!/usr/bin/env bash
# Where one request's time goes, per hop, by counts that do not move with
# the machine's load: system calls, thread wake-ups (epoll_wait returns and
# context switches) and the bytes of each read and write, for the sane pair
# and the nginx and haproxy pairs of `bench/run`.
#
#   client (h2load --h1) ─▶ hop A (plaintext in) ══mTLS══▶ hop B ─▶ nginx `200 ok`
#
# sane: hop A outbound HTTP ══ one HTTP/2 connection over mutual TLS ══▶
# hop B inbound (STRICT), certificates from a sane-control-plane CA (as
# bench/callgrind.sh); nginx and haproxy: bench/peers/{nginx,haproxy}-{a,b}
# (HTTP/1.1 with upstream keep-alive over TLS 1.3 between the hops), with
# an openssl CA. Every proxy runs one worker; the ports are the peers'
# fixed ones moved by PORT_BASE (default 28000: 18001 → 28001), so this
# does not collide with a `bench/run` on the same machine.
#
# For each variant: WARMUP requests, then N requests one at a time (C=1:
# each request finds both hops idle, as at a low, open-loop rate) while
# `perf stat` counts each hop's system calls (syscall tracepoints) and
# context switches; the figures are divided by N. Then a short sample of
# SAMPLE requests under `strace -f` shows what one request does on each
# hop: the sequence of calls with their byte counts (the middle request of
# the sample is printed).
#
# Usage: bench/hop-counts.sh                   # all three variants
#        VARIANTS=sane N=2000 bench/hop-counts.sh
#        PROXY=/tmp/sane-proxy.before VARIANTS=sane bench/hop-counts.sh
#        RATE=2000 C=16 bench/hop-counts.sh    # open loop: h2load --rps (counts then depend on batching)
# BIN: where sane-proxy and sane-control-plane are (default
# ${CARGO_TARGET_DIR:-target}/release; NO_BUILD=1 skips the build).
# Needs: perf, strace, nginx (+ stream module), haproxy, h2load, openssl,
# curl, python3 (scripts/bench-deps.sh installs the packaged ones).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-2000}
WARMUP=${WARMUP:-300}
C=${C:-1}
RATE=${RATE:-}
SAMPLE=${SAMPLE:-21}
PORT_BASE=${PORT_BASE:-28000}
VARIANTS=${VARIANTS:-sane nginx haproxy}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${BIN:-$TARGET/release}
PROXY=${PROXY:-$BIN/sane-proxy}
TOKEN=sane-hop-counts-token

for tool in perf strace nginx haproxy h2load openssl curl python3; do
    command -v "$tool" >/dev/null || { echo "hop-counts.sh: $tool not found (scripts/bench-deps.sh; apt-get install strace)" >&2; exit 1; }
done
if [[ -z "${NO_BUILD:-}" && " $VARIANTS " == *" sane "* ]]; then
    # The sidecar on its own, last (bench/text-layout.sh says why).
    (cd "$ROOT" && cargo build --release -p sane-control-plane --bin sane-control-plane \
        && cargo build --release -p sane-proxy --bin sane-proxy)
fi

WORK=$(mktemp -d /tmp/sane-hop-counts.XXXXXX)
mkdir -p "$WORK"/{run,logs,tokens,certs,conf}
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

port() { echo $((PORT_BASE + $1 - 18000)); }

# listening, until_ok, sane_a_yaml, sane_b_yaml
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

# bench/peers/<name> with @WORK@ and the ports filled in.
peer_conf() {
    python3 - "$ROOT/bench/peers/$1" "$WORK" "$PORT_BASE" >"$WORK/conf/$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read().replace("@WORK@", sys.argv[2])
base = int(sys.argv[3])
print(re.sub(r"\b180(\d\d)\b", lambda m: str(base + int(m.group(1))), text), end="")
PY
    echo "$WORK/conf/$1"
}

# --- certificates for the peers (as bench/src/topology.rs) ---
(
    cd "$WORK/certs"
    key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
    key ca.key
    openssl req -x509 -new -key ca.key -subj /CN=hop-counts-ca -days 2 -sha256 \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out ca.pem 2>/dev/null
    leaf() {
        key "$1.key"
        openssl req -new -key "$1.key" -subj "/CN=$1" -out "$1.csr" 2>/dev/null
        printf '%b' "$2" >"$1.ext"
        openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -sha256 \
            -extfile "$1.ext" -out "$1.crt" 2>/dev/null
        cat "$1.crt" "$1.key" >"$1.pem"
    }
    leaf server 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:server.perf2.local,IP:127.0.0.1\n'
    leaf client 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n'
)

# --- backend ---
mkdir -p "$WORK/run/backend"
nginx -e "$WORK/logs/backend.error.log" -c "$(peer_conf backend.conf)" -g 'daemon off;' >"$WORK/logs/backend.log" 2>&1 &
PIDS+=($!)
BACKEND=127.0.0.1:$(port 18080)
until_ok "http://$BACKEND/"

# The pid of the process doing a hop's work: nginx's worker (the master's
# child), haproxy's and sane's own.
worker_of() {
    local pid=$1 deadline=$((SECONDS + 30))
    if [[ "$(cat "/proc/$pid/comm")" == nginx ]]; then
        while ((SECONDS < deadline)); do
            local child
            child=$(pgrep -P "$pid" | head -n1 || true)
            if [[ -n "$child" ]]; then echo "$child"; return 0; fi
            sleep 0.1
        done
        return 1
    fi
    echo "$pid"
}

start_sane() { # sets A_ADDR, HOP_A, HOP_B
    if [[ -z "${CP_API:-}" ]]; then
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
    fi
    sane_b_yaml "${BACKEND##*:}" >"$WORK/conf/sane-b.yaml"
    "$PROXY" --config "$WORK/conf/sane-b.yaml" --workers 1 >"$WORK/logs/sane-b.log" 2>&1 &
    HOP_B=$!
    PIDS+=("$HOP_B")
    local b_addr
    b_addr=$(listening "$WORK/logs/sane-b.log" inbound)
    sane_a_yaml "${BACKEND##*:}" "${b_addr##*:}" >"$WORK/conf/sane-a.yaml"
    "$PROXY" --config "$WORK/conf/sane-a.yaml" --workers 1 >"$WORK/logs/sane-a.log" 2>&1 &
    HOP_A=$!
    PIDS+=("$HOP_A")
    A_ADDR=$(listening "$WORK/logs/sane-a.log" outbound)
}

start_nginx() {
    mkdir -p "$WORK/run/nginx-a" "$WORK/run/nginx-b"
    nginx -e "$WORK/logs/nginx-b.error.log" -c "$(peer_conf nginx-b.conf)" -g 'daemon off;' >"$WORK/logs/nginx-b.log" 2>&1 &
    HOP_B=$!
    PIDS+=("$HOP_B")
    nginx -e "$WORK/logs/nginx-a.error.log" -c "$(peer_conf nginx-a.conf)" -g 'daemon off;' >"$WORK/logs/nginx-a.log" 2>&1 &
    HOP_A=$!
    PIDS+=("$HOP_A")
    A_ADDR=127.0.0.1:$(port 18001)
}

start_haproxy() {
    haproxy -f "$(peer_conf haproxy-b.cfg)" >"$WORK/logs/haproxy-b.log" 2>&1 &
    HOP_B=$!
    PIDS+=("$HOP_B")
    haproxy -f "$(peer_conf haproxy-a.cfg)" >"$WORK/logs/haproxy-a.log" 2>&1 &
    HOP_A=$!
    PIDS+=("$HOP_A")
    A_ADDR=127.0.0.1:$(port 18011)
}

load() { # requests
    local log="$WORK/logs/h2load.log"
    local rate=()
    [[ -n "$RATE" ]] && rate=(--rps "$((RATE / C))")
    h2load --h1 -n "$1" -c "$C" "${rate[@]}" -H ':authority: backend' "http://$A_ADDR/" >"$log" 2>&1
    if ! grep -q "requests: $1 total, $1 started, $1 done, $1 succeeded" "$log"; then
        echo "hop-counts.sh: not every request succeeded:" >&2
        cat "$log" >&2
        return 1
    fi
}

EVENTS=read,readv,recvfrom,recvmsg,write,writev,sendto,sendmsg,epoll_wait,epoll_pwait,futex
count() { # variant
    local a b
    a=$(worker_of "$HOP_A")
    b=$(worker_of "$HOP_B")
    local perf_pids=()
    for hop in a b; do
        local pid=$a
        [[ $hop == b ]] && pid=$b
        perf stat -x, -e "$(sed 's/\([a-z_]*\)/syscalls:sys_enter_\1/g' <<<"$EVENTS"),context-switches" \
            -p "$pid" -o "$WORK/perf-$hop.csv" &
        perf_pids+=($!)
    done
    local deadline=$((SECONDS + 30))
    until [[ -s "$WORK/perf-a.csv" && -s "$WORK/perf-b.csv" ]] || ((SECONDS > deadline)); do sleep 0.1; done
    load "$N"
    kill -INT "${perf_pids[@]}"
    wait "${perf_pids[@]}" 2>/dev/null || true
    echo "== $1: per request, $N requests over $C connection(s)${RATE:+ at $RATE req/s} after $WARMUP warm-up"
    printf '%-16s %8s %8s\n' call "hop A" "hop B"
    local total_a=0 total_b=0
    for ev in ${EVENTS//,/ } context-switches; do
        local name=syscalls:sys_enter_$ev
        [[ $ev == context-switches ]] && name=$ev
        local ca cb
        ca=$(awk -F, -v e="$name" '$3 == e { print $1 }' "$WORK/perf-a.csv")
        cb=$(awk -F, -v e="$name" '$3 == e { print $1 }' "$WORK/perf-b.csv")
        [[ "${ca:-0}${cb:-0}" =~ ^[0]*$ ]] && continue
        awk -v e="$ev" -v a="${ca:-0}" -v b="${cb:-0}" -v n="$N" 'BEGIN { printf "%-16s %8.2f %8.2f\n", e, a / n, b / n }'
        if [[ $ev != context-switches ]]; then
            total_a=$((total_a + ${ca:-0}))
            total_b=$((total_b + ${cb:-0}))
        fi
    done
    awk -v a="$total_a" -v b="$total_b" -v n="$N" 'BEGIN { printf "%-16s %8.2f %8.2f\n", "(these calls)", a / n, b / n }'
    # One request's calls on each hop, with their byte counts.
    for hop in a b; do
        local pid=$a
        [[ $hop == b ]] && pid=$b
        strace -f -qq -e trace=read,readv,recvfrom,recvmsg,write,writev,sendto,sendmsg,epoll_wait,epoll_pwait \
            -e signal=none -o "$WORK/strace-$hop.txt" -p "$pid" &
        local st=$!
        sleep 1 # allow-sleep: strace attaches asynchronously; a short margin, not a readiness wait
        load "$SAMPLE"
        sleep 0.5 # allow-sleep: let strace write out the last calls
        kill -INT "$st"
        wait "$st" 2>/dev/null || true
        echo "-- $1 hop ${hop^^}: the calls of one request (the middle one of $SAMPLE)"
        python3 - "$WORK/strace-$hop.txt" "$SAMPLE" <<'PY'
import re, sys
lines = [l.rstrip() for l in open(sys.argv[1])]
n = int(sys.argv[2])
# A request starts with the first read that follows an epoll_wait returning
# after the previous request: split on epoll_wait calls that returned 1+
# events after a write, and print the middle chunk.
calls = []
for l in lines:
    l = re.sub(r"^\d+\s+", "", l)
    m = re.match(r"(\w+)\((\d+)?(.*)\)\s+=\s+(-?\d+)(.*)", l)
    if not m:
        continue
    name, fd, rest, ret = m.group(1), m.group(2), m.group(3), int(m.group(4))
    calls.append((name, fd, ret, m.group(5).strip()))
# A request starts with a read of the entry fd (where the first bytes of
# the sample came in: the client's connection on hop A, hop A's on hop B)
# once the previous request's answer was written to it.
entry = next((fd for name, fd, ret, _ in calls if name in ("read", "recvfrom", "recvmsg", "readv") and ret > 0), None)
starts, answered = [], True
for i, (name, fd, ret, _) in enumerate(calls):
    if fd == entry and name in ("read", "recvfrom", "recvmsg", "readv") and ret > 0 and answered:
        starts.append(i)
        answered = False
    if fd == entry and name in ("write", "writev", "sendto", "sendmsg") and ret > 0:
        answered = True
if len(starts) < 3:
    print("   (too few calls captured)")
    sys.exit(0)
k = len(starts) // 2
# Include the epoll_wait(s) right before the start.
s = starts[k]
while s > 0 and calls[s - 1][0].startswith("epoll"):
    s -= 1
e = starts[k + 1]
while e > 0 and calls[e - 1][0].startswith("epoll"):
    e -= 1
for name, fd, ret, tail in calls[s:e]:
    what = f"{name}(fd {fd})" if fd else name
    print(f"   {what:<22} = {ret} {tail}".rstrip())
PY
    done
}

for v in $VARIANTS; do
    case "$v" in
        sane) start_sane ;;
        nginx) start_nginx ;;
        haproxy) start_haproxy ;;
        *) echo "hop-counts.sh: unknown variant $v" >&2; exit 1 ;;
    esac
    until_ok "http://$A_ADDR/"
    load "$WARMUP"
    count "$v"
    kill "$HOP_A" "$HOP_B" 2>/dev/null || true
    wait "$HOP_A" "$HOP_B" 2>/dev/null || true
    echo
done
