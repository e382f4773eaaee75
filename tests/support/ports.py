"""Free loopback ports for servers started by tests: the same helper the demo and benchmarks use,
so that one process never hands out a port twice, whichever module asked."""

from sidecar.demo.ports import free_port

__all__ = ["free_port"]
