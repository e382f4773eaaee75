#!/usr/bin/env bash
# wrk (load generator) and nginx (the reference proxy) for bench/proxy_overhead.py, from
# Debian's packages. Idempotent: does nothing when both are on PATH. `apt-get update` runs only
# when apt does not know a package yet (a fresh image has no package lists).
#
# The benchmark starts nginx itself, with its own config, and stops it by pid: the package's
# service must not start (it would listen on port 80 and outlive the run). Docker images ship a
# policy-rc.d that forbids starting services during installs; where there is none, one is put
# in place for the install and removed afterwards.
set -euo pipefail

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-bench-tools: ${missing[*]} missing; run as root, or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi

policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# install-bench-tools.sh: no service starts during this install\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
for pkg in "${missing[@]}"; do
  if ! apt-cache show "$pkg" >/dev/null 2>&1; then
    apt-get -qq update
    break
  fi
done
apt-get -qq install -y --no-install-recommends "${missing[@]}" >/dev/null
wrk --version 2>&1 | head -n1 || true  # wrk --version exits 1
/usr/sbin/nginx -v
