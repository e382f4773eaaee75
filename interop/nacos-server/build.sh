#!/usr/bin/env bash
# Build the Nacos server into OUT: OUT/peer.jar, its dependencies in OUT/lib/ (the jar's manifest
# names them), OUT/bin/peer, the launcher, and OUT/bin/train, which scripts/build-interop.sh runs
# once the build is in its final place: it records the classes a start loads into OUT/cds.jsa
# (Java's class data sharing), which later starts map instead of loading them again (a quarter
# faster). Runs in a copy of this folder (see scripts/build-interop.sh); Maven's default ~/.m2
# keeps the downloads between builds.
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
here="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd -P)"
# bin/train sets CDS to record the archive; otherwise it is used, if there is one. JVM warnings
# (a stale archive, say) go to stderr.
exec java ${CDS:-"-XX:SharedArchiveFile=$here/cds.jsa"} -Xlog:disable -Xlog:all=warning:stderr \
  -Xms128m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xss512k \
  -Djava.net.preferIPv4Stack=true -Dnacos.standalone=true -Dnacos.deployment.type=server \
  -Dnacos.functionMode= -Dnacos.server.ip=127.0.0.1 -Dnacos.home="$home" \
  -Dnacos.logs.path="$home/logs" -DJM.LOG.PATH="$home/logs/client" -DJM.SNAPSHOT.PATH="$home" \
  -Duser.home="$home" -Dderby.stream.error.file="$home/derby.log" \
  -jar "$here/peer.jar" "$@"
LAUNCHER
# The training start stops once its first context is refreshed (Spring's spring.context.exit),
# its data in a directory of its own, on a port unlikely to be taken (if it is, there is no
# archive, and the server starts as before).
cat >"$out/bin/train" <<'TRAIN'
#!/bin/sh
here="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd -P)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
CDS="-XX:ArchiveClassesAtExit=$here/cds.jsa -Dspring.context.exit=onRefresh" \
  "$here/bin/peer" --home="$work" --nacos.server.main.port=$((20000 + $$ % 20000))
TRAIN
chmod +x "$out/bin/peer" "$out/bin/train"
