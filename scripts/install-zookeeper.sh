#!/usr/bin/env bash
# Install Debian's ZooKeeper server (3.8) and a Java runtime for the registry tests, when missing.
# The tests run org.apache.zookeeper.server.ZooKeeperServerMain from the package's jars; the
# package's own service is never started. These packages pull in many dependencies, so they come
# from the system's apt (root needed, as in CI) instead of a private copy under .tools/.
set -euo pipefail
packages=(zookeeper default-jre-headless)

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

missing=()
for p in "${packages[@]}"; do
  installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-zookeeper: ${missing[*]} missing; run as root (apt-get install ${missing[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when apt does not know a candidate for every missing package.
for p in "${missing[@]}"; do
  if ! apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    apt-get update -qq
    break
  fi
done
apt-get install -y -qq --no-install-recommends "${missing[@]}"
ls /usr/share/java/zookeeper.jar
