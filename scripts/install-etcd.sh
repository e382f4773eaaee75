#!/usr/bin/env bash
# Fetch etcd from Debian 12 (bookworm), which packages it as `etcd-server` (3.4.23), into
# .tools/etcd/. The system's apt state is left alone, as in install-consul.sh: a private sources
# list reuses the mirror URI of the machine's own apt configuration, with private lists and cache
# directories under .tools/ (apart from Consul's, which point at bullseye).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools"
dest="$tools/etcd"
if [ -x "$dest/usr/bin/etcd" ]; then
  exit 0
fi

mirror="${ETCD_DEBIAN_MIRROR:-}"
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
  echo "install-etcd: no Debian mirror found in the apt configuration; set ETCD_DEBIAN_MIRROR" >&2
  exit 1
fi

work="$tools/apt-bookworm"
mkdir -p "$work/lists/partial" "$work/archives/partial"
keyring=/usr/share/keyrings/debian-archive-bookworm-stable.gpg
[ -f "$keyring" ] || keyring=/usr/share/keyrings/debian-archive-keyring.gpg
echo "deb [signed-by=$keyring] $mirror bookworm main" > "$work/sources.list"
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
(cd "$work/archives" && apt-get "${apt_opts[@]}" -qq download etcd-server)
deb="$(ls "$work/archives"/etcd-server_*.deb | head -n1)"
# Unpacked next to the final place, then moved: an interrupted run leaves no half-made .tools/etcd.
rm -rf "$dest.partial"
dpkg -x "$deb" "$dest.partial"
mv "$dest.partial" "$dest"
"$dest/usr/bin/etcd" --version | head -n1
