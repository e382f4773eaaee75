#!/usr/bin/env bash
# Debian's nginx, the reference proxy of tests/test_nginx_differential.py and of
# bench/proxy_overhead.py. Idempotent and instant when /usr/sbin/nginx is there. `apt-get update`
# runs only when apt knows no candidate for the package (a fresh image has no package lists).
#
# The package, not nginx-light: on bookworm nginx-light is a transitional package that pulls in
# nginx plus the echo module, so nginx is the smaller install.
#
# Tests and benchmarks start nginx themselves, with their own config, and stop it by pid: the
# package's service must not start (it would listen on port 80 and outlive the run). Docker
# images ship a policy-rc.d that forbids starting services during installs; where there is none,
# one is put in place for the install and removed afterwards.
set -euo pipefail

if [ -x /usr/sbin/nginx ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-nginx: /usr/sbin/nginx missing; run as root, or: sudo apt-get install nginx" >&2
  exit 1
fi

policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# install-nginx.sh: no service starts during this install\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
if ! apt-cache policy nginx 2>/dev/null | grep -q 'Candidate: [0-9]'; then
  apt-get -qq update
fi
apt-get -qq install -y --no-install-recommends nginx >/dev/null
/usr/sbin/nginx -v
