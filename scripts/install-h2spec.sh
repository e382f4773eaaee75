#!/usr/bin/env bash
# h2spec, the HTTP/2 conformance suite (github.com/summerwind/h2spec), for the protocol tests:
# built with the machine's Go from the Go module proxy into .tools/h2spec/bin/h2spec. Idempotent
# and instant when the binary is there.
#
# The proxy serves h2spec v2.2.1+incompatible (its last tag without a go.mod; later tags declare
# a module path without /v2, which the proxy refuses). Such a module says nothing of its
# dependencies, so a `go install ...@version` would take the newest of each on the day: a small
# module of our own pins them instead (the versions a build took on 2026-12-07; the go command
# checks each against the checksum database). The module cache and the build cache live under
# .tools/h2spec/ too, so that a rebuild (after `rm .tools/h2spec/bin/h2spec`) downloads nothing,
# and `make clean` removes them (-modcacherw: the cache's files are writable, so rm -rf works).
# The binary is also kept in ~/.cache/graceful-sidecar/, by the content of this script.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.tools/h2spec"
binary="$dest/bin/h2spec"
[ -x "$binary" ] && exit 0

h2spec=github.com/summerwind/h2spec/cmd/h2spec@v2.2.1+incompatible
pins=(
  github.com/spf13/cobra@v1.10.2
  github.com/fatih/color@v1.19.0
  golang.org/x/net@v0.63.0
)

if ! command -v go >/dev/null 2>&1; then
  echo "install-h2spec: no Go toolchain (go) on PATH; h2spec is built from source" >&2
  exit 1
fi
# A build is kept by content, as the interop peers' are (scripts/build-interop.sh): a fresh
# clone copies it instead of downloading and compiling h2spec again.
cache="${XDG_CACHE_HOME:-$HOME/.cache}/graceful-sidecar/h2spec-$( (cat "$0"; go version) | sha256sum | cut -c1-16)"
if [ -x "$cache/h2spec" ]; then
  mkdir -p "$dest/bin"
  cp "$cache/h2spec" "$binary.partial"
  mv "$binary.partial" "$binary"
  echo "h2spec ${h2spec#*@} in $binary (kept in $cache)"
  exit 0
fi
export GOPATH="$dest/go" GOMODCACHE="$dest/go/pkg/mod" GOCACHE="$dest/cache"
# The machine's Go, never a toolchain download; a pin that needs a newer Go fails here, loudly.
export GOTOOLCHAIN=local GOFLAGS="-modcacherw -buildvcs=false" GO111MODULE=on CGO_ENABLED=0

# Built next to the final place, then moved: an interrupted run leaves no half-made binary.
build="$dest/build"
rm -rf "$build"
mkdir -p "$build" "$dest/bin"
cd "$build"
go mod init h2spec-build >/dev/null 2>&1
go get "$h2spec" "${pins[@]}" 2>&1 | grep -v '^go: downloading' || true
go build -trimpath -o "$binary.partial" github.com/summerwind/h2spec/cmd/h2spec
mkdir -p "$cache"
cp "$binary.partial" "$cache/h2spec.partial"
mv "$cache/h2spec.partial" "$cache/h2spec"
mv "$binary.partial" "$binary"
echo "h2spec ${h2spec#*@} in $binary"
