#!/usr/bin/env bash
# wrk (load generator) and nginx (the reference proxy) for bench/proxy_overhead.py, from
# Debian's packages. Idempotent: does nothing when both are there. nginx comes from
# install-nginx.sh (the tests need it too; it keeps the package's service from starting); wrk
# has no service. `apt-get update` runs only when apt does not know wrk yet (a fresh image has
# no package lists).
set -euo pipefail

"$(dirname "$0")/install-nginx.sh" >/dev/null

if command -v wrk >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-bench-tools: wrk missing; run as root, or: sudo apt-get install wrk" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if ! apt-cache show wrk >/dev/null 2>&1; then
  apt-get -qq update
fi
apt-get -qq install -y --no-install-recommends wrk >/dev/null
wrk --version 2>&1 | head -n1 || true  # wrk --version exits 1
