#!/usr/bin/env bash
# Installs the peers and load generators bench/run compares against: nginx,
# haproxy, wrk, h2load (nghttp2-client: the fixed-rate load generator),
# openssl, perf (linux-perf) from Debian's packages. Installs only what is
# missing.
# Debian/Ubuntu only (apt-get); the apt part needs root. The packaged nginx
# is never started as a service: every benchmark process runs in the
# foreground with its own config.
set -euo pipefail

declare -A package_of=(
  [nginx]=nginx
  [haproxy]=haproxy
  [wrk]=wrk
  [h2load]=nghttp2-client
  [openssl]=openssl
  [taskset]=util-linux
  [perf]=linux-perf
)

missing=()
for tool in "${!package_of[@]}"; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    missing+=("${package_of[$tool]}")
  fi
done
# TCP passthrough through nginx needs its stream module (a separate package).
if [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then
  missing+=(libnginx-mod-stream)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  mapfile -t packages < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [ "$(id -u)" -ne 0 ]; then
    echo "bench-deps: missing ${packages[*]}, and installing needs root" >&2
    exit 1
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "bench-deps: missing ${packages[*]}, and there is no apt-get here" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Keep the packaged nginx/haproxy services from starting on install.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created_policy=1
  fi
  echo "bench-deps: installing ${packages[*]}"
  if ! apt-get install -y --no-install-recommends "${packages[@]}"; then
    apt-get update
    apt-get install -y --no-install-recommends "${packages[@]}"
  fi
  if [ "$created_policy" -eq 1 ]; then rm -f "$policy"; fi
else
  echo "bench-deps: nginx, haproxy, wrk, h2load, openssl and taskset are installed"
fi

