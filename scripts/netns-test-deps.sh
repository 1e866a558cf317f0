#!/usr/bin/env bash
# Installs what e2e/tests/transparent.rs and e2e/tests/chaos.rs need to
# build two "pods" out of Linux network namespaces: ip and tc (iproute2),
# iptables, curl, setpriv (util-linux). tc netem also needs the sch_netem
# kernel module, which chaos.rs loads with modprobe where it can.
# Debian/Ubuntu only (apt-get); needs root. Installs only the tools that
# are missing, through scripts/apt-install.sh (one install at a time).
set -euo pipefail

declare -A package_of=(
  [ip]=iproute2
  [tc]=iproute2
  [iptables]=iptables
  [iptables-restore]=iptables
  [curl]=curl
  [setpriv]=util-linux
)

missing=()
for tool in "${!package_of[@]}"; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    missing+=("${package_of[$tool]}")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "netns-test-deps: ip, tc, iptables, curl and setpriv are installed"
  exit 0
fi
# Unique package names, stable order.
mapfile -t packages < <(printf '%s\n' "${missing[@]}" | sort -u)

exec "$(dirname "$0")/apt-install.sh" netns-test-deps "${packages[@]}"
