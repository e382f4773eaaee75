#!/usr/bin/env bash
# Builds the Spring Cloud peer into OUT: the Spring Boot jar extracted into OUT/app/, the
# launcher OUT/bin/peer, and OUT/bin/train, which scripts/build-interop.sh runs once the build
# is in its final place: it records the classes a start loads into OUT/cds.jsa (Java's class
# data sharing), which every later start maps instead of loading them again, twice as fast.
# Without the archive (a training that failed) the peer starts all the same, more slowly.
set -euo pipefail
out="$1"
mvn -B -q -DskipTests package
mkdir -p "$out/bin"
java -Djarmode=tools -jar target/peer.jar extract --destination "$out/app" >/dev/null
# JVM warnings (a stale archive, say) go to stderr: stdout carries the peer's events.
flags='-XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xlog:disable -Xlog:all=warning:stderr'
cat > "$out/bin/peer" <<LAUNCHER
#!/bin/sh
home="\$(cd "\$(dirname "\$(readlink -f "\$0")")/.." && pwd -P)"
exec java $flags -XX:SharedArchiveFile="\$home/cds.jsa" -jar "\$home/app/peer.jar" "\$@"
LAUNCHER
# The training start stops once its context is refreshed (Spring's spring.context.exit), before
# it calls anything: the Consul it is given is never reached.
cat > "$out/bin/train" <<TRAIN
#!/bin/sh
home="\$(cd "\$(dirname "\$(readlink -f "\$0")")/.." && pwd -P)"
exec java $flags -XX:ArchiveClassesAtExit="\$home/cds.jsa" -Dspring.context.exit=onRefresh \
  -jar "\$home/app/peer.jar" --peer.mode=list --peer.service=training \
  --spring.cloud.zookeeper.enabled=false --spring.cloud.consul.host=127.0.0.1 --spring.cloud.consul.port=1
TRAIN
chmod +x "$out/bin/peer" "$out/bin/train"
