#!/usr/bin/env bash
# etcd for the tests: Debian 12 (bookworm) packages it as `etcd-server` (3.4.23); unpacked into
# .tools/etcd/ by fetch-deb.sh, the system's own packages untouched.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
binary="$root/.tools/etcd/usr/bin/etcd"
[ -x "$binary" ] && exit 0
"$root/scripts/fetch-deb.sh" bookworm etcd-server etcd
"$binary" --version | sed -n 1p  # not head: SIGPIPE under pipefail
