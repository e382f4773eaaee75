"""The wire contract between sidecars, and with consumers that have none: the X-Sidecar-*
headers, the sidecar_* registry metadata with its defaults, the offline notice and the warmup
curve. Imports nothing of ours: both sides, and the registry adapters' layouts, build on it."""
