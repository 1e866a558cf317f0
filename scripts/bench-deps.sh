#!/usr/bin/env bash
# Installs the peers and load generators bench/run compares against: nginx,
# haproxy, wrk, h2load (nghttp2-client: the fixed-rate load generator),
# openssl, perf (linux-perf) from Debian's packages, and oha (the second,
# open-loop latency generator with coordinated-omission correction) from
# crates.io at a pinned version with `cargo install --locked` (into
# ~/.cargo/bin, or $OHA_ROOT/bin). Installs only what is missing.
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


# oha: not packaged in Debian; pinned so every run uses the same generator.
OHA_VERSION=1.16.0
oha_root=${OHA_ROOT:-$HOME/.cargo}
if [ "$("$oha_root/bin/oha" --version 2>/dev/null || true)" != "oha $OHA_VERSION" ]; then
  echo "bench-deps: installing oha $OHA_VERSION from crates.io (cargo install, a few minutes)"
  # Its own build directory: never the workspace's target dir.
  env -u CARGO_TARGET_DIR cargo install oha --version "$OHA_VERSION" --locked --root "$oha_root"
else
  echo "bench-deps: oha $OHA_VERSION is installed ($oha_root/bin/oha)"
fi
