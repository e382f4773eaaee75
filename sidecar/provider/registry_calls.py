"""The provider's calls to its registry: retried with backoff while the registry fails, and each
failure recorded where an operator looks (/status's `last_error`, the metrics, the log).

Neither sequence of the lifecycle stops for a registry outage: a register, a weight or a
deregistration waits for the registry to come back (within the drain's deadline when going
offline), and the last error says why meanwhile. A closed registry is no outage but a bug in the
order of shutdown: no retry can help it, so it is raised.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from registry_adapters import RegistryClosed, RegistryError
from sidecar.metrics import Metrics

log = logging.getLogger("sidecar.lifecycle")

# Quick first tries (a blip), then at most every 5 s (an outage).
BACKOFF_FIRST_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 5.0


class RegistryCalls:
    """The outcome of registry operations: counted by operation, the last error kept until a call
    succeeds."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.last_error: str | None = None

    async def retry(self, op: str, call: Callable[[], Awaitable[None]]) -> bool:
        """Call until it succeeds (then True); a registry error is recorded and the call tried
        again, with jitter that spreads a fleet's retries."""
        pause = BACKOFF_FIRST_SECONDS
        while True:
            try:
                await call()
            except RegistryClosed:
                raise
            except RegistryError as exc:
                self.failed(op, exc)
            else:
                self.succeeded(op)
                return True
            await asyncio.sleep(pause * random.uniform(0.8, 1.2))
            pause = min(pause * 2, BACKOFF_MAX_SECONDS)

    def succeeded(self, op: str) -> None:
        self.last_error = None
        self._metrics.registry_ops.labels(op).inc()

    def failed(self, op: str, exc: RegistryError) -> None:
        # The adapter's message says where, why and its own operation: "consul at
        # 127.0.0.1:8501: connection refused (register)"; `op` is the metrics label and the log's.
        self.last_error = str(exc)
        self._metrics.registry_errors.labels(op).inc()
        log.warning("registry %s failed: %s", op, exc)
