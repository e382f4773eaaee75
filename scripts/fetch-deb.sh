#!/usr/bin/env bash
# fetch-deb.sh SUITE PACKAGE [NAME]: download PACKAGE from Debian SUITE and unpack it into
# .tools/NAME/ (NAME defaults to PACKAGE).
# The system's apt state is left alone: a private sources list reuses the mirror URI of the
# machine's own apt configuration (or $DEBIAN_MIRROR), with private lists and cache directories
# under .tools/apt-SUITE/. Nothing is installed system-wide. The unpacked package is also kept in
# ~/.cache/graceful-sidecar/deb/SUITE-PACKAGE, which a fresh clone copies instead of asking the
# mirror again (a Debian release's packages change only for security fixes; remove the folder
# to fetch the package anew).
set -euo pipefail
suite="$1"
package="$2"
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools"
dest="$tools/${3:-$package}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/graceful-sidecar/deb/$suite-$package"
# Copied next to the final place, then moved: an interrupted run leaves no half-made one.
mkdir -p "$tools"
rm -rf "$dest.partial"
if [ -d "$cache" ]; then
  cp -a "$cache" "$dest.partial"
  rm -rf "$dest"
  mv "$dest.partial" "$dest"
  exit 0
fi

mirror="${DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  # deb822 files first (URIs: ...), then one-line sources ("deb URI suite ...").
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    mirror="$(awk '/^URIs:/ {print $2}' "$f" | grep -v -- '-security' | grep -i debian | head -n1 || true)"
    [ -n "$mirror" ] && break
  done
fi
if [ -z "$mirror" ]; then
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    mirror="$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) {print $i; break}}' "$f" \
      | grep -v -- '-security' | grep -i debian | head -n1 || true)"
    [ -n "$mirror" ] && break
  done
fi
if [ -z "$mirror" ]; then
  echo "fetch-deb: no Debian mirror found in the apt configuration; set DEBIAN_MIRROR" >&2
  exit 1
fi

work="$tools/apt-$suite"
mkdir -p "$work/lists/partial" "$work/archives/partial"
keyring="/usr/share/keyrings/debian-archive-$suite-stable.gpg"
[ -f "$keyring" ] || keyring=/usr/share/keyrings/debian-archive-keyring.gpg
echo "deb [signed-by=$keyring] $mirror $suite main" > "$work/sources.list"
apt_opts=(
  -oDir::Etc::SourceList="$work/sources.list"
  -oDir::Etc::SourceParts=/dev/null
  -oDir::State::Lists="$work/lists"
  -oDir::Cache::Archives="$work/archives"
  -oDir::Cache::pkgcache="" -oDir::Cache::srcpkgcache=""
  -oAPT::Architecture="$(dpkg --print-architecture)"
  -oDebug::NoLocking=1
  -oAPT::Sandbox::User=root
)
apt-get "${apt_opts[@]}" -qq update
(cd "$work/archives" && apt-get "${apt_opts[@]}" -qq download "$package")
deb="$(ls "$work/archives/${package}"_*.deb | sed -n 1p)"
dpkg -x "$deb" "$dest.partial"
mkdir -p "$(dirname "$cache")"
rm -rf "$cache.partial"
cp -a "$dest.partial" "$cache.partial"
mv "$cache.partial" "$cache"
rm -rf "$dest"
mv "$dest.partial" "$dest"
