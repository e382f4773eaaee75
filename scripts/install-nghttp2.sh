#!/usr/bin/env bash
# nghttp2's tools, from Debian's packages: h2load (nghttp2-client: HTTP/2 load generator), nghttpd
# (nghttp2-server: an HTTP/2 server, the reference peer of the protocol tests and the app of the
# benchmarks) and nghttpx (nghttp2-proxy: the reference proxy the benchmarks compare with). For
# the tests (make tools) and the benchmarks (install-bench-tools.sh). Idempotent and instant
# when all three are there. `apt-get update` runs only when apt knows no candidate for a missing
# package (a fresh image has no package lists).
#
# Tests and benchmarks start nghttpd and nghttpx themselves and stop them by pid: nghttp2-proxy's
# service must not start (its postinst starts nghttpx with the package's config). Docker images
# ship a policy-rc.d that forbids starting services during installs; where there is none, one is
# put in place for the install and removed afterwards.
set -euo pipefail

missing=()
[ -x /usr/bin/h2load ] || missing+=(nghttp2-client)
[ -x /usr/sbin/nghttpd ] || missing+=(nghttp2-server)
[ -x /usr/sbin/nghttpx ] || missing+=(nghttp2-proxy)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-nghttp2: ${missing[*]} missing; run as root, or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi

policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# install-nghttp2.sh: no service starts during this install\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
for pkg in "${missing[@]}"; do
  if ! apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    apt-get -qq update
    break
  fi
done
apt-get -qq install -y --no-install-recommends "${missing[@]}" >/dev/null
/usr/bin/h2load --version | sed -n 1p  # not head: SIGPIPE under pipefail
