#!/usr/bin/env bash
# The interop peers (interop/*/): small programs of other ecosystems (Spring Cloud, Dubbo,
# go-kratos, grpc-go) that the tests run against our sidecars, built here from Maven Central and
# the Go module proxy. Each peer's own interop/PEER/build.sh OUT builds it into OUT/bin/peer.
#
# A build is kept by content: in $XDG_CACHE_HOME/graceful-sidecar/interop/PEER-KEY, KEY a hash of
# the peer's files and of the Java and Go versions, and .tools/interop/PEER links to it. So a
# fresh clone of an unchanged peer builds nothing, and Maven's and Go's own caches (~/.m2, the Go
# module and build caches) make a changed one quick. A peer is built in a copy of its folder, so
# the clone gets no target/ directories. Idempotent; `make clean` drops only the links.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/graceful-sidecar/interop"
mkdir -p "$cache" "$root/.tools/interop"
export GOTOOLCHAIN=local GOFLAGS="-modcacherw -buildvcs=false"

toolchains() {
  java -version 2>&1 | sed -n 1p
  mvn -v 2>/dev/null | sed -n 1p
  go version
}

for dir in "$root"/interop/*/; do
  [ -x "$dir/build.sh" ] || continue
  peer="$(basename "$dir")"
  key="$( (cd "$dir" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum; toolchains) \
    | sha256sum | cut -c1-16)"
  out="$cache/$peer-$key"
  if [ ! -x "$out/bin/peer" ]; then
    echo "build-interop: building $peer (its first build downloads its dependencies)"
    tmp="$(mktemp -d "$cache/.$peer.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    cp -r "$dir" "$tmp/src"
    (cd "$tmp/src" && ./build.sh "$tmp/out")
    [ -x "$tmp/out/bin/peer" ] || { echo "build-interop: $peer built no bin/peer" >&2; exit 1; }
    rm -rf "$out"
    mv "$tmp/out" "$out"
    rm -rf "$tmp"
    trap - EXIT
  fi
  ln -sfn "$out" "$root/.tools/interop/$peer"
done
