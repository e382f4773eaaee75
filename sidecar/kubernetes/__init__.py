"""Adoption in Kubernetes: `graceful-sidecar inject` and the manifests it reads and writes."""
