#!/usr/bin/env bash
# Installs Debian packages for the test and benchmark dependency scripts:
#   scripts/apt-install.sh WHO PACKAGE...
# WHO names the calling script in messages. Needs root and apt-get
# (Debian/Ubuntu); says why and exits 1 without them.
#
# Test binaries run in parallel and several call their dependency script at
# once (the four chaos tests, the netns and gateway tests): every install
# runs under one lock (flock on /var/lock/sane-mesh-apt.lock), and apt
# itself waits for dpkg's lock (DPkg::Lock::Timeout) in case another apt
# runs. Package lists are updated only when an install fails for want of
# them. Packaged services are kept from starting (policy-rc.d), so nothing
# runs as a system service: the tests start their own processes.
set -euo pipefail

who=$1
shift
if [ "$(id -u)" -ne 0 ]; then
  echo "$who: missing $*, and installing needs root" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "$who: missing $*, and there is no apt-get here" >&2
  exit 1
fi

exec 9>/var/lock/sane-mesh-apt.lock
flock 9

export DEBIAN_FRONTEND=noninteractive
apt=(apt-get -o DPkg::Lock::Timeout=300 -y --no-install-recommends)
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod +x "$policy"
  created_policy=1
fi
cleanup() { if [ "$created_policy" -eq 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

echo "$who: installing $*"
if ! "${apt[@]}" install "$@"; then
  "${apt[@]}" update
  "${apt[@]}" install "$@"
fi
