#!/usr/bin/env bash
# Builds the Eureka server into $1/peer.jar, with $1/bin/peer to run it.
set -euo pipefail
out="$1"
mvn -B -q -DskipTests package
mkdir -p "$out/bin"
cp target/peer.jar "$out/peer.jar"
cat > "$out/bin/peer" <<'LAUNCH'
#!/bin/sh
exec java -XX:+UseSerialGC -Xms64m -Xmx384m -XX:TieredStopAtLevel=1 -Xss512k -jar "$(dirname "$0")/../peer.jar" "$@"
LAUNCH
chmod +x "$out/bin/peer"
