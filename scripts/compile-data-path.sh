#!/usr/bin/env bash
# The data path compiled in place (setup.py names the modules, mypyc compiles them): each module's
# C extension lands beside its .py, and Python imports the extension first. Run by make before
# the tests, the demo and the benchmarks, so they run what a wheel installs.
#
# A build is kept by content, as the interop peers are: in
# $XDG_CACHE_HOME/graceful-sidecar/compiled/KEY, KEY a hash of the package's sources, setup.py,
# pyproject.toml and the Python and mypy versions. A fresh clone of unchanged sources copies the
# extensions in; a change anywhere in the package builds them again (about a minute and a half
# here), since a compiled module is checked against the types of what it imports. The build runs
# in a copy of the tree, so the clone gets no build/ directory.
#
#   scripts/compile-data-path.sh          build or fetch, and copy the extensions in
#   scripts/compile-data-path.sh --remove take them out again: the data path runs from source
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="$root/.venv/bin/python"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/graceful-sidecar/compiled"

remove() {
  find "$root/sidecar" "$root/registry_adapters" -name '*.so' -delete
  rm -f "$root"/sidecar_native__mypyc*.so
}
remove
[ "${1:-}" = "--remove" ] && exit 0

key="$( (cd "$root" && find sidecar registry_adapters -name '*.py' -print0 | LC_ALL=C sort -z \
  | xargs -0 sha256sum; sha256sum setup.py pyproject.toml
  "$py" -c 'import sys, mypy.version; print(sys.version, mypy.version.__version__)') \
  | sha256sum | cut -c1-16)"
out="$cache/$key"
if [ ! -f "$out/built" ]; then
  echo "compile-data-path: compiling the data path with mypyc (setup.py), kept in $out"
  mkdir -p "$cache"
  tmp="$(mktemp -d "$cache/.build.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  cp -r "$root/sidecar" "$root/registry_adapters" "$root/setup.py" "$root/pyproject.toml" \
    "$root/README.md" "$tmp/"
  find "$tmp" -name __pycache__ -prune -exec rm -rf {} +
  (cd "$tmp" && GRACEFUL_SIDECAR_COMPILE=1 "$py" setup.py -q build_ext --inplace >build.log 2>&1) \
    || { tail -n 40 "$tmp/build.log" >&2; echo "compile-data-path: the build failed" >&2; exit 1; }
  mkdir -p "$tmp/out"
  (cd "$tmp" && find sidecar registry_adapters sidecar_native__mypyc*.so -name '*.so' -print0 \
    | xargs -0 cp --parents -t out)
  rm -rf "$out"
  mv "$tmp/out" "$out"
  touch "$out/built"
  rm -rf "$tmp"
  trap - EXIT
fi
(cd "$out" && find . -name '*.so' -print0 | xargs -0 cp --parents -t "$root")
# Every module must have come out compiled: an optional extension that failed to build would
# otherwise leave the tests and the benchmarks running pure Python without a word.
(cd "$root" && "$py" -c '
import sys
from sidecar import compiled
state = compiled.described()
print("compile-data-path: the data path is", state)
sys.exit(0 if state.startswith("compiled") else 1)
')
