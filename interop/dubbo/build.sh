#!/usr/bin/env bash
# Build the Dubbo peer into OUT: OUT/peer.jar, its dependencies in OUT/lib/ (the jar's manifest
# names them), and OUT/bin/peer, the launcher. Runs in a copy of this folder (see
# scripts/build-interop.sh); Maven's default ~/.m2 keeps the downloads between builds.
set -euo pipefail
out="$1"
mvn -B -q -DskipTests package
mkdir -p "$out/bin"
cp target/peer.jar "$out/peer.jar"
rm -rf "$out/lib"
cp -r target/lib "$out/lib"
cat >"$out/bin/peer" <<'LAUNCHER'
#!/bin/sh
exec java -Ddubbo.application.logger=slf4j -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xss512k -jar "$(dirname "$0")/../peer.jar" "$@"
LAUNCHER
chmod +x "$out/bin/peer"
