"""`python -m sidecar` is the `graceful-sidecar` command."""

from sidecar.app.cli import main

main()
