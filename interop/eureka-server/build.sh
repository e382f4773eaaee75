#!/usr/bin/env bash
# Builds the Eureka server into OUT: the Spring Boot jar extracted into OUT/app/, the launcher
# OUT/bin/peer, and OUT/bin/train, which scripts/build-interop.sh runs once the build is in its
# final place: it records the classes a start loads into OUT/cds.jsa (Java's class data
# sharing), which every later start maps instead of loading them again, twice as fast. Without
# the archive (a training that failed) the server starts all the same, as slowly as before.
set -euo pipefail
out="$1"
mvn -B -q -DskipTests package
mkdir -p "$out/bin"
java -Djarmode=tools -jar target/peer.jar extract --destination "$out/app" >/dev/null
# JVM warnings (a stale archive, say) go to stderr: stdout belongs to the program.
flags='-XX:+UseSerialGC -Xms64m -Xmx384m -XX:TieredStopAtLevel=1 -Xss512k -Xlog:disable -Xlog:all=warning:stderr'
cat > "$out/bin/peer" <<LAUNCH
#!/bin/sh
home="\$(cd "\$(dirname "\$(readlink -f "\$0")")/.." && pwd -P)"
exec java $flags -XX:SharedArchiveFile="\$home/cds.jsa" -jar "\$home/app/peer.jar" "\$@"
LAUNCH
# The training start stops once its context is refreshed (Spring's spring.context.exit).
cat > "$out/bin/train" <<TRAIN
#!/bin/sh
home="\$(cd "\$(dirname "\$(readlink -f "\$0")")/.." && pwd -P)"
exec java $flags -XX:ArchiveClassesAtExit="\$home/cds.jsa" -Dspring.context.exit=onRefresh \
  -jar "\$home/app/peer.jar" --server.port=0
TRAIN
chmod +x "$out/bin/peer" "$out/bin/train"
