"""Composes the components and runs them until a stop signal, like uvicorn's Server:
start-up, wait, shutdown, each component an async context manager on one AsyncExitStack so that
cleanup runs in reverse and only for what started.

Signals: the first SIGTERM/SIGINT runs the offline sequence (the same one /shutdown runs), then
the process exits 0; a second one forces exit at once. A SIGTERM after a finished /shutdown exits
at once, since the offline sequence returns its stored result.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager

from registry_adapters import open_registry
from sidecar.admin import AdminServer
from sidecar.config import Settings
from sidecar.inbound import InboundProxy
from sidecar.inflight import ConsumerBook, InflightTracker
from sidecar.lifecycle import Lifecycle
from sidecar.metrics import Metrics
from sidecar.notify import Notifier
from sidecar.upstream import Upstreams

log = logging.getLogger("sidecar")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Counts SIGTERM/SIGINT; `first` is set by the first one, `forced` by the second."""

    def __init__(self) -> None:
        self.first = asyncio.Event()
        self.forced = asyncio.Event()
        self.last: int = 0

    def received(self, signum: int) -> None:
        self.last = signum
        if self.first.is_set():
            log.warning("second %s: forcing exit", signal.Signals(signum).name)
            self.forced.set()
        else:
            log.info("%s: going offline", signal.Signals(signum).name)
            self.first.set()

    @contextmanager
    def installed(self) -> Iterator[StopSignals]:
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self.received, signum)
        try:
            yield self
        finally:
            for signum in STOP_SIGNALS:
                loop.remove_signal_handler(signum)


async def serve(settings: Settings) -> int:
    """Run the sidecar until stopped; returns the process exit status."""
    stops = StopSignals()
    async with AsyncExitStack() as stack:
        stack.enter_context(stops.installed())
        metrics = Metrics()
        registry = await stack.enter_async_context(open_registry(settings.registry))
        notifier = await stack.enter_async_context(Notifier(settings.token))
        tracker = InflightTracker()
        metrics.inflight.set_function(lambda: tracker.count)
        consumers = ConsumerBook()
        lifecycle = Lifecycle(settings, registry, tracker, consumers, notifier, metrics)
        if settings.listen is not None:
            await stack.enter_async_context(InboundProxy(settings, lifecycle, tracker, consumers, metrics))
        upstreams = await stack.enter_async_context(Upstreams(settings, registry, metrics))
        admin = AdminServer(
            settings, lifecycle, upstreams.on_offline, lambda: {"upstreams": upstreams.status()}
        )
        await stack.enter_async_context(admin)
        lifecycle.start()
        stack.push_async_callback(lifecycle.stop_tasks)

        await stops.first.wait()
        offline = asyncio.ensure_future(lifecycle.offline())
        forced = asyncio.ensure_future(stops.forced.wait())
        await asyncio.wait([offline, forced], return_when=asyncio.FIRST_COMPLETED)
        forced.cancel()
        status = 0 if offline.done() else 128 + stops.last
    return status
