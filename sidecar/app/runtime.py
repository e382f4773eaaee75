"""Composes the components and runs them until a stop signal, like uvicorn's Server:
start-up, running, shutdown, each component an async context manager on one AsyncExitStack so
that cleanup runs in reverse and only for what started.

Signals: the first SIGTERM/SIGINT runs the offline sequence (the same one /shutdown runs), then
the process exits 0; a second one forces exit at once. A SIGTERM after a finished /shutdown exits
at once, since the offline sequence returns its stored result. In exec mode the child is stopped
after the offline sequence (or at once on a second signal), and its exit status is ours; a child
that exits on its own triggers the offline sequence too, so its instance never stays registered.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Iterator
from contextlib import AsyncExitStack, contextmanager

from registry_adapters import open_registry
from sidecar import compiled
from sidecar.app.admin import AdminServer
from sidecar.app.status import StatusView
from sidecar.config import Settings
from sidecar.consumer.upstream import Upstreams
from sidecar.exec.supervisor import Supervisor
from sidecar.metrics import Metrics
from sidecar.provider.inbound import InboundProxy
from sidecar.provider.inflight import ConsumerBook, InflightTracker
from sidecar.provider.lifecycle import Lifecycle
from sidecar.provider.notify import Notifier

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


async def first_of(*waitables: Awaitable[object]) -> asyncio.Future[object]:
    """Wait until one of `waitables` is done; cancel the others; return the finished one."""
    futures = [asyncio.ensure_future(waitable) for waitable in waitables]
    done, pending = await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    for future in pending:
        future.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return done.pop()


def run(settings: Settings) -> int:
    """`serve()` on uvloop, the event loop the data path is measured on; where uvloop cannot be
    imported (a platform without a wheel), on asyncio's own loop, said once in the log."""
    try:
        import uvloop
    except ImportError as exc:
        log.warning("uvloop unavailable (%s): running on asyncio's own event loop", exc)
        return asyncio.run(serve(settings))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(settings))


async def serve(settings: Settings) -> int:
    """Run the sidecar until stopped; returns the process exit status."""
    stops = StopSignals()
    async with AsyncExitStack() as stack:
        # Start-up: each component in order; cleanup runs in reverse, only for what started.
        stack.enter_context(stops.installed())
        metrics = Metrics()
        metrics.set_info(settings.service, settings.instance_id)
        registry = await stack.enter_async_context(open_registry(settings.registry))
        notifier = await stack.enter_async_context(Notifier(settings.token))
        tracker = InflightTracker()
        metrics.inflight.set_function(lambda: tracker.count)
        consumers = ConsumerBook()
        lifecycle = Lifecycle(settings, registry, tracker, consumers, notifier, metrics)
        if settings.listen is not None:
            await stack.enter_async_context(InboundProxy(settings, lifecycle, tracker, consumers, metrics))
        upstreams = await stack.enter_async_context(Upstreams(settings, registry, metrics))
        log.info("data path: %s", compiled.described())  # once the options have all held
        child = await stack.enter_async_context(Supervisor(settings.command)) if settings.command else None

        def on_offline(service: str, instance_id: str) -> bool:
            metrics.notify_received.inc()
            return upstreams.on_offline(service, instance_id)

        view = StatusView(settings, lifecycle, tracker, consumers, registry.kind, upstreams, child, metrics)
        await stack.enter_async_context(AdminServer(settings, lifecycle, on_offline, view))
        await stack.enter_async_context(lifecycle)  # the online sequence starts

        # Running: until SIGTERM/SIGINT, or (exec mode) until the child exits on its own.
        await first_of(stops.first.wait(), *([child.wait()] if child else []))
        if child is not None and child.returncode is not None:
            log.warning("the child exited on its own (%d): going offline", child.returncode)

        # Shutdown. 1. The offline sequence; a second signal cuts it short.
        offline = asyncio.ensure_future(lifecycle.offline())
        await first_of(offline, stops.forced.wait())
        # 2. Exec mode: SIGTERM to the child's group, SIGKILL after --stop-timeout or on a
        #    second signal. The exit status is the child's.
        if child is not None:
            hurry = asyncio.ensure_future(stops.forced.wait())
            hurry.add_done_callback(lambda done: None if done.cancelled() else child.hurry())
            status = await child.stop(settings.stop_timeout)
            hurry.cancel()
        else:
            status = 0 if not stops.forced.is_set() else 128 + stops.last
    return status
