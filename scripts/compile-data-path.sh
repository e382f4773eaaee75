#!/usr/bin/env bash
# The data path compiled in place (sidecar/compiled.py names the modules, setup.py has mypyc
# compile them): each module's C extension lands beside its .py, and Python imports the extension
# first. Run by make before the tests, the demo and the benchmarks, so they run what a wheel
# installs.
#
# A build is kept by content, as the interop peers are: in
# $XDG_CACHE_HOME/graceful-sidecar/compiled/KEY, KEY a hash of the package's sources, setup.py,
# pyproject.toml, this script and the Python, mypy and setuptools versions. A fresh clone of
# unchanged sources copies the extensions in; a change anywhere in the package builds them again
# (about a minute and a half here), since a compiled module is checked against the types of what
# it imports. The key names no path: every clone of the same content shares the build (CI's too).
# The build runs in a copy of the tree (the key is that copy's), so the clone gets no
# build/ directory and an edit made meanwhile is not taken for built. One build at a time (flock).
#
# The compiled modules share one library, sidecar_native__mypyc, at the root of the tree: mypyc
# places each module relative to it. The editable install maps the packages only, so a .pth file
# puts the root on the venv's path, and the library is found from any directory, as it is beside
# the packages in a wheel's install.
#
#   scripts/compile-data-path.sh          build or fetch, and copy the extensions in
#   scripts/compile-data-path.sh --remove take them out again: the data path runs from source
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="$root/.venv/bin/python"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/graceful-sidecar/compiled"
pth=""
[ -x "$py" ] && pth="$("$py" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/graceful_sidecar_native.pth"

remove() {
  find "$root/sidecar" "$root/registry_adapters" -name '*.so' -delete
  rm -f "$root"/sidecar_native__mypyc*.so
  [ -z "$pth" ] || rm -f "$pth"
}
if [ "${1:-}" = "--remove" ]; then
  remove
  exit 0
fi
[ -x "$py" ] || { echo "compile-data-path: no $py (make creates it)" >&2; exit 1; }
"$py" -c 'import mypy' 2>/dev/null || { echo "compile-data-path: mypy is not installed in .venv" >&2; exit 1; }

# What sidecar/compiled.py says of the data path in the tree at $1; fails unless all compiled.
compiled_in() {
  (cd "$1" && "$py" -c '
import sys
from sidecar import compiled
state = compiled.described()
print("compile-data-path: the data path is", state)
sys.exit(0 if state.startswith("compiled") else 1)
')
}

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
tmp="$(mktemp -d "$cache/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
cp -r "$root/sidecar" "$root/registry_adapters" "$root/setup.py" "$root/pyproject.toml" \
  "$root/README.md" "$tmp/"
find "$tmp" \( -name __pycache__ -o -name '*.so' \) -prune -exec rm -rf {} +
key="$( (cd "$tmp" && find sidecar registry_adapters -name '*.py' -print0 | LC_ALL=C sort -z \
  | xargs -0 sha256sum; sha256sum setup.py pyproject.toml; sha256sum <"$root/scripts/compile-data-path.sh"
  "$py" -c 'import sys, mypy.version, setuptools; print(sys.version, mypy.version.__version__, setuptools.__version__)') \
  | sha256sum | cut -c1-16)"
out="$cache/$key"
if [ ! -f "$out/built" ]; then
  echo "compile-data-path: compiling the data path with mypyc (setup.py), kept in $out"
  (cd "$tmp" && GRACEFUL_SIDECAR_COMPILE=1 "$py" setup.py -q build_ext --inplace >build.log 2>&1) \
    || { tail -n 40 "$tmp/build.log" >&2; echo "compile-data-path: the build failed" >&2; exit 1; }
  # Every module must have come out compiled (setup.py drops them all if one failed): else the
  # tests and the benchmarks would run pure Python without a word. Checked before it is kept.
  compiled_in "$tmp" >/dev/null \
    || { tail -n 40 "$tmp/build.log" >&2; echo "compile-data-path: not every module compiled" >&2; exit 1; }
  mkdir -p "$tmp/out"
  (cd "$tmp" && find sidecar registry_adapters -name '*.so' -print0 | xargs -0 -r cp --parents -t out \
    && cp sidecar_native__mypyc*.so out/)
  touch "$tmp/out/built"
  rm -rf "$out"
  mv -T "$tmp/out" "$out"
fi
remove
(cd "$out" && find . -name '*.so' -print0 | xargs -0 -r cp --parents -t "$root")
echo "$root" >"$pth"
compiled_in "$root"
