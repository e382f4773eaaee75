#!/usr/bin/env bash
# Consul for the tests: Debian 11 (bullseye) packages it as `consul` (1.8.7); unpacked into
# .tools/consul/ by fetch-deb.sh, the system's own packages untouched.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
binary="$root/.tools/consul/usr/bin/consul"
[ -x "$binary" ] && exit 0
"$root/scripts/fetch-deb.sh" bullseye consul
"$binary" version | sed -n 1p  # sed reads it all: head would leave consul a SIGPIPE (141 under pipefail)
