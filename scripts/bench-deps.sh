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
  "$(dirname "$0")/apt-install.sh" bench-deps "${packages[@]}"
else
  echo "bench-deps: nginx, haproxy, wrk, h2load, openssl and taskset are installed"
fi

