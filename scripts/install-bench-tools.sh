#!/usr/bin/env bash
# The benchmarks' tools, from Debian's packages: wrk (load generator) and nginx (the reference
# proxy) for bench/proxy_overhead.py, valgrind for bench/request_instructions.py. Idempotent:
# does nothing when all are there. nginx comes from install-nginx.sh (the tests need it too; it
# keeps the package's service from starting); the others have no service. `apt-get update` runs
# only when apt does not know a missing package yet (a fresh image has no package lists).
set -euo pipefail

"$(dirname "$0")/install-nginx.sh" >/dev/null

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-bench-tools: ${missing[*]} missing; run as root, or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
for pkg in "${missing[@]}"; do
  if ! apt-cache show "$pkg" >/dev/null 2>&1; then
    apt-get -qq update
    break
  fi
done
apt-get -qq install -y --no-install-recommends "${missing[@]}" >/dev/null
