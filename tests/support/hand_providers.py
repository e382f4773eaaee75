"""Instances registered by hand in a SQLite registry, through registry_adapters' own API, as a
provider sidecar registers them, except for the clock: each says it registered `age` seconds
ago by a wall clock `skew` seconds off this machine's (its `sidecar_start_ms`), and raises its
registry weight in warmup steps from that age on, on the monotonic clock, as the provider's
lifecycle does. No app stands behind them unless the test gives one's port.

The registry and the stepping run in a thread with an event loop of their own, so the test may
block (start processes, wait on probes) without stopping the steps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from registry_adapters import Instance
from registry_adapters.sqlite import SQLiteRegistry
from sidecar.protocol import metadata as meta
from sidecar.protocol.warmup import Warmup

# Rows must outlive the test: nothing but the stepping rewrites them.
ROW_TTL_S = 600.0
# A call into the thread's loop (a registration) takes milliseconds; this is for a loaded machine.
CALL_TIMEOUT_S = 30.0


class HandProviders:
    """Context manager: the hand-registered instances of one SQLite registry file."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hand-providers", daemon=True)
        self._registry: SQLiteRegistry | None = None
        self._steps: list[concurrent.futures.Future[Any]] = []
        self._registered_at: dict[str, float] = {}  # instance id -> monotonic time its age was 0

    def __enter__(self) -> HandProviders:
        self._thread.start()
        self._registry = SQLiteRegistry(self._path, ttl=ROW_TTL_S)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for step in self._steps:
            step.cancel()
        if self._registry is not None:
            self._call(self._registry.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CALL_TIMEOUT_S)
        self._loop.close()

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(CALL_TIMEOUT_S)

    def register(
        self,
        service: str,
        instance_id: str,
        warmup: Warmup,
        *,
        age: float,
        skew: float,
        port: int = 1,
        base: int = 100,
    ) -> None:
        """Register an instance `age` seconds into its warmup, by a provider whose wall clock is
        `skew` seconds ahead (negative: behind), and step its registry weight from then on."""
        assert self._registry is not None
        registered_at = time.monotonic() - age
        start_ms = round((time.time() + skew - age) * 1000)
        fields = meta.published(start_ms, warmup, base, "http://127.0.0.1:1", None)
        instance = Instance(service, instance_id, "127.0.0.1", port, warmup.weight(base, age), fields)
        self._call(self._registry.register(instance))
        step = asyncio.run_coroutine_threadsafe(
            self._step(instance_id, warmup, base, registered_at), self._loop
        )
        self._steps.append(step)
        self._registered_at[instance_id] = registered_at

    def register_plain(self, service: str, instance_id: str, port: int) -> None:
        """Register an instance with no sidecar metadata at all (an app registered by other
        means, or a provider sidecar of a release that published less)."""
        assert self._registry is not None
        self._call(self._registry.register(Instance(service, instance_id, "127.0.0.1", port)))

    def age(self, instance_id: str) -> float:
        """How far into its warmup the instance truly is now."""
        return time.monotonic() - self._registered_at[instance_id]

    async def _step(self, instance_id: str, warmup: Warmup, base: int, registered_at: float) -> None:
        """The provider's step 4: the registry weight raised at every step until the window ends."""
        assert self._registry is not None
        published = -1
        while (elapsed := time.monotonic() - registered_at) < warmup.window:
            if (weight := warmup.weight(base, elapsed)) != published:
                await self._registry.set_weight(instance_id, weight)
                published = weight
            # On the provider's beat: steps every step_seconds() from its registration on.
            step = warmup.step_seconds()
            await asyncio.sleep(min(step - elapsed % step, warmup.window - elapsed))
        await self._registry.set_weight(instance_id, base)
