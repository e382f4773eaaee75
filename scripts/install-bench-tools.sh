#!/usr/bin/env bash
# The benchmarks' tools, from Debian's packages: wrk (load generator) and nginx (the reference
# proxy) for bench/proxy_overhead.py, valgrind for bench/request_instructions.py, and for HTTP/2
# h2load (load generator), nghttpd (the app) and nghttpx (the reference proxy). Idempotent: does
# nothing when all are there. nginx comes from install-nginx.sh and nghttp2's tools from
# install-nghttp2.sh (the tests need them too; both keep the packages' services from starting);
# the others have no service. `apt-get update` runs only when apt does not know a missing
# package yet (a fresh image has no package lists).
set -euo pipefail

"$(dirname "$0")/install-nginx.sh" >/dev/null
"$(dirname "$0")/install-nghttp2.sh" >/dev/null

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
