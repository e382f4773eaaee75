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
    waiter = asyncio.create_task(tracker.wait_quiet(1.0, since=started))
    await asyncio.sleep(0.1)  # well inside the 1 s quiet period, even on a loaded machine
    with tracker.track():
        arrived = time.monotonic()
    await waiter
    assert time.monotonic() - arrived >= 1.0


def test_consumer_book_validates_bounds_and_expires() -> None:
    """Only http(s) URLs whose host is the caller's address are kept, newest last, at most
    max_size, and forgotten after the TTL."""
    book = ConsumerBook(max_size=2, ttl=0.05)
    assert not book.remember("not a url", "10.0.0.1")
    assert not book.remember("ftp://10.0.0.1", "10.0.0.1")
    assert not book.remember("http://" + "1" * 600, "10.0.0.1")
    assert book.remember("http://10.0.0.1:16688/", "10.0.0.1")
    assert book.remember("http://10.0.0.2:16688", "10.0.0.2")
    assert book.remember("http://10.0.0.3:16688", "10.0.0.3")
    assert book.recent() == ["http://10.0.0.2:16688", "http://10.0.0.3:16688"]
    time.sleep(0.06)  # the TTL is the behaviour under test: let it pass
    assert book.recent() == []


def test_consumer_book_keeps_only_the_callers_own_address() -> None:
    """Notifications carry the fleet token: a URL naming another host than the caller, a host
    name, or an odd URL is not remembered."""
    book = ConsumerBook()
    assert not book.remember("http://10.0.0.9:16688", "10.0.0.1")
    assert not book.remember("http://xn--.com:16688", "10.0.0.1")
    assert not book.remember("http://10.0.0.1:16688/a\tb", "10.0.0.1")
    assert not book.remember("http://user:pw@10.0.0.1:16688", "10.0.0.1")
    assert not book.remember("http://10.0.0.1:16688", None)
    assert book.remember("http://[::1]:16688", "::1")
    assert book.recent() == ["http://[::1]:16688"]
