#!/usr/bin/env bash
# Builds the Spring Cloud peer into OUT/peer.jar with the launcher OUT/bin/peer.
set -euo pipefail
out="$1"
mvn -B -q -DskipTests package
mkdir -p "$out/bin"
cp target/peer.jar "$out/peer.jar"
cat > "$out/bin/peer" <<'LAUNCHER'
#!/bin/sh
exec java -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -jar "$(dirname "$0")/../peer.jar" "$@"
LAUNCHER
chmod +x "$out/bin/peer"
