#!/usr/bin/env bash
# Builds the go-kratos peer into $1/bin/peer (run by scripts/build-interop.sh in a copy of this folder).
set -euo pipefail
mkdir -p "$1/bin"
go build -trimpath -o "$1/bin/peer" .
