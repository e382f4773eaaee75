#!/usr/bin/env bash
# The interop peers (interop/*/): small programs of other ecosystems (Spring Cloud, Dubbo,
# go-kratos, grpc-go) that the tests run against our sidecars, built here from Maven Central and
# the Go module proxy. Each peer's own interop/PEER/build.sh OUT builds it into OUT/bin/peer.
#
# A build is kept by content: in $XDG_CACHE_HOME/graceful-sidecar/interop/PEER-KEY, KEY a hash of
# the peer's files and of the Java and Go versions, and .tools/interop/PEER links to it. So a
# fresh clone of an unchanged peer builds nothing, and Maven's and Go's own caches (~/.m2, the Go
# module and build caches) make a changed one quick. A peer is built in a copy of its folder, so
# the clone gets no target/ directories. A JVM peer's bin/train, if it has one, then records its
# class data archive in place (see interop/spring-cloud/build.sh). Idempotent; `make clean`
# drops only the links.
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

versions="$(toolchains)"
for dir in "$root"/interop/*/; do
  [ -x "$dir/build.sh" ] || continue
  peer="$(basename "$dir")"
  key="$( (cd "$dir" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum; echo "$versions") \
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
  # A JVM peer's class data archive is recorded where the build stays (the archive names the jars
  # by path): once, and again if a training was cut short. Its output is kept beside it.
  if [ -x "$out/bin/train" ] && [ ! -s "$out/cds.jsa" ]; then
    echo "build-interop: recording $peer's class data archive"
    "$out/bin/train" >"$out/train.log" 2>&1 || echo "build-interop: $peer starts without it (see $out/train.log)"
  fi
  ln -sfn "$out" "$root/.tools/interop/$peer"
done
