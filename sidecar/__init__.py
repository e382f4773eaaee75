"""graceful-sidecar: lossless releases for any service."""
