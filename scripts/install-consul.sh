#!/usr/bin/env bash
# Fetch Consul from Debian 11 (bullseye), which packages it as `consul` (1.8.7), into .tools/.
# The system's apt state is left alone: a private sources list reuses the mirror URI of the
# machine's own apt configuration, with private lists and cache directories under .tools/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools"
dest="$tools/consul"
if [ -x "$dest/usr/bin/consul" ]; then
  exit 0
fi

mirror="${CONSUL_DEBIAN_MIRROR:-}"
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
  echo "install-consul: no Debian mirror found in the apt configuration; set CONSUL_DEBIAN_MIRROR" >&2
  exit 1
fi

work="$tools/apt"
mkdir -p "$work/lists/partial" "$work/archives/partial" "$dest"
keyring=/usr/share/keyrings/debian-archive-bullseye-stable.gpg
[ -f "$keyring" ] || keyring=/usr/share/keyrings/debian-archive-keyring.gpg
echo "deb [signed-by=$keyring] $mirror bullseye main" > "$work/sources.list"
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
(cd "$work/archives" && apt-get "${apt_opts[@]}" -qq download consul)
deb="$(ls "$work/archives"/consul_*.deb | head -n1)"
dpkg -x "$deb" "$dest"
"$dest/usr/bin/consul" version | head -n1
