"""`python -m sidecar` is the `graceful-sidecar` command."""

from sidecar.cli import main

main()
