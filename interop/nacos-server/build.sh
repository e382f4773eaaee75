#!/usr/bin/env bash
# Build the Nacos server into OUT: OUT/peer.jar, its dependencies in OUT/lib/ (the jar's manifest
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
# bin/peer [--home=DIR] [--nacos.server.main.port=N] [--SPRING.PROPERTY=VALUE...]
# Nacos keeps its data (embedded Derby, naming snapshots) and logs under DIR (default: the
# working directory), never in ~/nacos.
home="$PWD"
case "${1:-}" in --home=*) home="${1#--home=}"; shift ;; esac
mkdir -p "$home"
home="$(cd "$home" && pwd)"
exec java -Xms128m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xss512k \
  -Djava.net.preferIPv4Stack=true -Dnacos.standalone=true -Dnacos.deployment.type=server \
  -Dnacos.functionMode= -Dnacos.server.ip=127.0.0.1 -Dnacos.home="$home" \
  -Dnacos.logs.path="$home/logs" -DJM.LOG.PATH="$home/logs/client" -DJM.SNAPSHOT.PATH="$home" \
  -Duser.home="$home" -Dderby.stream.error.file="$home/derby.log" \
  -jar "$(dirname "$0")/../peer.jar" "$@"
LAUNCHER
chmod +x "$out/bin/peer"
