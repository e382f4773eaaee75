"""What the lifecycle publishes to the registry when weight changes race with registry calls.

In process, with a registry whose calls the test holds open: the race is between two coroutines
of one event loop, and only a registry that answers when told makes it happen every time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from types import TracebackType

from registry_adapters import Instance
from sidecar.config import load_settings
from sidecar.metrics import Metrics
from sidecar.protocol import metadata as meta
from sidecar.provider.inflight import ConsumerBook, InflightTracker
from sidecar.provider.lifecycle import Lifecycle
from sidecar.provider.notify import Notifier
from tests.support.procs import await_for


class HeldRegistry:
    """Records what is published; `register` waits for `release` while `hold` is set."""

    kind = "held"

    def __init__(self) -> None:
        self.published: dict[str, Instance] = {}
        self.hold = asyncio.Event()
        self.release = asyncio.Event()
        self.holding = asyncio.Event()  # a register call is waiting for `release`

    async def register(self, instance: Instance) -> None:
        if self.hold.is_set():
            self.holding.set()
            await self.release.wait()
        self.published[instance.instance_id] = instance

    async def set_weight(self, instance_id: str, weight: int) -> None:
        self.published[instance_id] = self.published[instance_id].with_weight(weight)

    async def set_offline(self, instance_id: str) -> None:
        pass

    async def deregister(self, instance_id: str) -> None:
        self.published.pop(instance_id, None)

    async def watch(self, service: str) -> AsyncGenerator[list[Instance], None]:
        yield [i for i in self.published.values() if i.service == service]

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> HeldRegistry:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        pass


def provider_lifecycle(registry: HeldRegistry) -> Lifecycle:
    flags = {
        "service": "svc",
        "instance_id": "svc-1",
        "listen": "127.0.0.1:1",
        "app": "http://127.0.0.1:1",
        "app_health": "",  # no app to wait for: registration starts at once
    }
    settings = load_settings(flags, env={})
    return Lifecycle(settings, registry, InflightTracker(), ConsumerBook(), Notifier(None), Metrics())


async def test_override_set_during_registration_reaches_the_metadata() -> None:
    """PUT /weight while the register call is under way: once serving, the registered metadata
    carries the override (consumer sidecars read it there), not only the registry weight."""
    registry = HeldRegistry()
    registry.hold.set()
    async with provider_lifecycle(registry) as lifecycle:
        await asyncio.wait_for(registry.holding.wait(), 10)
        assert await lifecycle.set_override(7) is False  # not registered yet
        registry.hold.clear()
        registry.release.set()
        await await_for(lambda: lifecycle.phase == "serving", 10, "phase serving")
        published = registry.published["svc-1"]
        assert published.meta.get(meta.META_WEIGHT_OVERRIDE) == "7", published.meta
        assert published.weight == 7
