"""What a backend keeps to hold its instances true: the published record of each, the changes
made to it, and the background beats that keep them alive.

A backend publishes from its own record of what it wants shown (`Published`), never from what
the registry last answered: the registry may lose an instance (a restarted agent, a lost lease,
a deleted row) or miss a change made while it was away, and a beat must be able to publish
again exactly what is wanted. `Publisher` makes `set_weight` and `set_offline` alike for the
backends that change their records under one asyncio lock: the record is changed, then shown
as each backend shows it. How an instance is kept alive (a TTL check passed, a heartbeat row
rewritten, a lease renewed) is each backend's business too: `Beats` only runs its beat for
every instance, every interval, and keeps one failing beat from ending the keep-alive.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from registry_adapters.base import Backend, Instance, RegistryError, RegistryRejected


@dataclass(slots=True)
class Published:
    """What this process wants the registry to show for one registered instance."""

    instance: Instance
    offline: bool = False
    # False after a change the registry may have missed: the next beat publishes it again.
    synced: bool = True
    # deregister began and is not confirmed yet: the record stays, to be retried, but takes no
    # more changes (only ZooKeeper keeps such records).
    leaving: bool = False

    @property
    def in_rotation(self) -> bool:
        """Whether consumers should see it: not offline and a weight above 0."""
        return not self.offline and self.instance.weight > 0

    def change(self, *, weight: int | None = None, offline: bool = False) -> None:
        """Apply `set_weight` or `set_offline` (offline is for good), to be published."""
        if weight is not None:
            self.instance = self.instance.with_weight(weight)
        self.offline = self.offline or offline
        self.synced = False


def not_registered(instance_id: str) -> RegistryRejected:
    """The error of `set_weight` for an instance that this object did not register."""
    return RegistryRejected(f"{instance_id!r} was not registered through this registry")


P = TypeVar("P", bound=Published)


class Publisher(Backend, Generic[P]):
    """A backend that keeps a record per registered instance, changed under one lock (so that
    a beat's publishing can never follow a deregistration): it shows a change with `_show` and
    removes an instance with `_withdraw`."""

    def __init__(self) -> None:
        self._published: dict[str, P] = {}
        self._lock = asyncio.Lock()

    async def set_weight(self, instance_id: str, weight: int) -> None:
        self._check_open()
        async with self._lock:
            published = self._published.get(instance_id)
            if published is None or published.leaving:
                raise not_registered(instance_id)
            published.change(weight=weight)
            await self._show(published, weight_changed=True)

    async def set_offline(self, instance_id: str) -> None:
        self._check_open()
        async with self._lock:
            published = self._published.get(instance_id)
            if published is not None:
                published.change(offline=True)
                await self._show(published, weight_changed=False)

    async def deregister(self, instance_id: str) -> None:
        self._check_open()
        async with self._lock:
            await self._withdraw(instance_id, self._published.get(instance_id))

    async def _show(self, published: P, *, weight_changed: bool) -> None:
        """Make the registry show `published` after `set_weight` or `set_offline` changed it."""
        raise NotImplementedError

    async def _withdraw(self, instance_id: str, published: P | None) -> None:
        """Remove the instance from the registry and forget it (`published`: None if this
        object did not register it)."""
        raise NotImplementedError


class Beats:
    """One task per registered instance that calls `beat(instance_id)` every `interval`
    seconds, until it answers False (the instance is gone) or is stopped. A failed beat is
    logged as "`what` of INSTANCE failed" and the next one comes all the same."""

    def __init__(
        self, what: str, interval: float, beat: Callable[[str], Awaitable[bool]], logger: logging.Logger
    ) -> None:
        self._what = what
        self._log = logger  # the backend's: its failures are logged where its other news is
        self._interval = interval
        self._beat = beat
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, instance_id: str) -> None:
        """Beat for `instance_id`, unless that runs already."""
        if instance_id not in self._tasks:
            name = f"{self._what} of {instance_id}"
            self._tasks[instance_id] = asyncio.create_task(self._run(instance_id), name=name)

    async def stop(self, instance_ids: Iterable[str] | None = None) -> None:
        """Stop the beats of `instance_ids` (all of them by default) and wait until they ended."""
        ids = list(self._tasks) if instance_ids is None else instance_ids
        tasks = [task for i in ids if (task := self._tasks.pop(i, None)) is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, instance_id: str) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                if not await self._beat(instance_id):
                    return
            except RegistryError as exc:
                self._log.warning("%s of %s failed: %s", self._what, instance_id, exc)
            except Exception:  # the beat must outlive any surprise, or the instance expires
                self._log.exception("%s of %s failed", self._what, instance_id)
