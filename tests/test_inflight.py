"""In-flight tracking and the consumer address book (pure logic, in process)."""

from __future__ import annotations

import asyncio
import time

from sidecar.inflight import ConsumerBook, InflightTracker


async def test_quiet_wait_ends_when_idle_and_quiet() -> None:
    """wait_quiet returns once the last request ended and the quiet period passed since `since`."""
    tracker = InflightTracker()
    release = asyncio.Event()

    async def request() -> None:
        with tracker.track():
            await release.wait()

    task = asyncio.create_task(request())
    await asyncio.sleep(0)
    assert tracker.count == 1
    waiter = asyncio.create_task(tracker.wait_quiet(0.05, since=time.monotonic()))
    await asyncio.sleep(0.1)
    assert not waiter.done()  # a request is in flight
    release.set()
    await task
    await asyncio.wait_for(waiter, 1)
    assert tracker.count == 0


async def test_new_arrival_restarts_quiet_period() -> None:
    """A request arriving during the quiet period pushes its end out."""
    tracker = InflightTracker()
    started = time.monotonic()
    waiter = asyncio.create_task(tracker.wait_quiet(0.2, since=started))
    await asyncio.sleep(0.15)
    with tracker.track():
        pass
    await waiter
    assert time.monotonic() - started >= 0.3


def test_consumer_book_validates_bounds_and_expires() -> None:
    """Only http(s) URLs are kept, newest last, at most max_size, and forgotten after the TTL."""
    book = ConsumerBook(max_size=2, ttl=0.05)
    assert not book.remember("not a url")
    assert not book.remember("ftp://x")
    assert not book.remember("http://" + "a" * 600)
    assert book.remember("http://10.0.0.1:16688/")
    assert book.remember("http://10.0.0.2:16688")
    assert book.remember("http://10.0.0.3:16688")
    assert book.recent() == ["http://10.0.0.2:16688", "http://10.0.0.3:16688"]
    time.sleep(0.06)
    assert book.recent() == []
