"""In-flight tracking and the consumer address book (pure logic, in process)."""

from __future__ import annotations

import asyncio
import time

from sidecar.provider.inflight import ConsumerBook, InflightTracker

# How long a wait that must not end is watched: long on an idle loop, short for a test.
MUST_NOT_END_S = 0.3


async def test_quiet_wait_waits_for_what_is_in_flight() -> None:
    """wait_quiet does not return while a request is in flight, although the quiet period has
    long passed; it returns once the request ends."""
    tracker = InflightTracker()
    entered, release = asyncio.Event(), asyncio.Event()

    async def request() -> None:
        tracker.begin()
        try:
            entered.set()
            await release.wait()
        finally:
            tracker.end()

    task = asyncio.create_task(request())
    await asyncio.wait_for(entered.wait(), 5)
    waiter = asyncio.create_task(tracker.wait_quiet(0.01, since=time.monotonic() - 10))
    done, _ = await asyncio.wait([waiter], timeout=MUST_NOT_END_S)
    assert not done, "wait_quiet returned with a request in flight"
    release.set()
    await task
    await asyncio.wait_for(waiter, 5)
    assert tracker.count == 0


async def test_new_arrival_restarts_quiet_period() -> None:
    """A request arriving while wait_quiet waits pushes its end to a full quiet period after
    that arrival."""
    tracker = InflightTracker()
    quiet = 1.0
    waiter = asyncio.create_task(tracker.wait_quiet(quiet, since=time.monotonic()))
    done, _ = await asyncio.wait([waiter], timeout=MUST_NOT_END_S)  # well inside the quiet period
    assert not done
    tracker.begin()
    arrived = time.monotonic()
    tracker.end()
    await asyncio.wait_for(waiter, 5)
    assert time.monotonic() - arrived >= quiet


async def test_a_cancel_ends_the_quiet_wait_whenever_a_request_arrives() -> None:
    """The drain's deadline cancels wait_quiet, which must end even when a request arrived just
    before (on Python 3.11, asyncio.wait_for lost such a cancel, and a drain under steady load
    went on until the load stopped). The arrival and the cancel are put 0 to 5 loop steps apart,
    which covers the step where the wait has woken but not yet resumed."""
    for steps in range(6):
        tracker = InflightTracker()
        waiter = asyncio.create_task(tracker.wait_quiet(60.0, since=time.monotonic()))
        await asyncio.sleep(0)  # it waits for an arrival now
        tracker.begin()
        tracker.end()
        for _ in range(steps):
            await asyncio.sleep(0)
        waiter.cancel()
        done, _ = await asyncio.wait([waiter], timeout=MUST_NOT_END_S)
        assert done, f"a cancel {steps} loop steps after an arrival did not end wait_quiet"
        assert waiter.cancelled()


async def test_wait_idle_returns_when_the_last_request_ends() -> None:
    """wait_idle returns at once when nothing is in flight, else when the last request ends."""
    tracker = InflightTracker()
    await asyncio.wait_for(tracker.wait_idle(), 5)
    release = asyncio.Event()
    entered = [asyncio.Event(), asyncio.Event()]

    async def request(entering: asyncio.Event) -> None:
        tracker.begin()
        try:
            entering.set()
            await release.wait()
        finally:
            tracker.end()

    requests = [asyncio.create_task(request(entering)) for entering in entered]
    await asyncio.wait_for(asyncio.gather(*(entering.wait() for entering in entered)), 5)
    assert tracker.count == 2
    waiter = asyncio.create_task(tracker.wait_idle())
    done, _ = await asyncio.wait([waiter], timeout=MUST_NOT_END_S)
    assert not done
    release.set()
    await asyncio.wait_for(waiter, 5)
    assert tracker.count == 0
    await asyncio.gather(*requests)


def test_consumer_book_validates_bounds_and_expires() -> None:
    """Only http(s) URLs whose host is the caller's address are kept, newest last, at most
    max_size, and forgotten after the TTL."""
    now = [1000.0]
    book = ConsumerBook(max_size=2, ttl=300.0, clock=lambda: now[0])
    assert not book.remember("not a url", "10.0.0.1")
    assert not book.remember("ftp://10.0.0.1", "10.0.0.1")
    assert not book.remember("http://" + "1" * 600, "10.0.0.1")
    assert book.remember("http://10.0.0.1:16688/", "10.0.0.1")
    assert book.remember("http://10.0.0.2:16688", "10.0.0.2")
    assert book.remember("http://10.0.0.3:16688", "10.0.0.3")
    assert book.recent() == ["http://10.0.0.2:16688", "http://10.0.0.3:16688"]
    now[0] += 299.0
    assert book.recent() == ["http://10.0.0.2:16688", "http://10.0.0.3:16688"]
    assert book.remember("http://10.0.0.2:16688", "10.0.0.2")  # seen again: kept longer
    now[0] += 2.0
    assert book.recent() == ["http://10.0.0.2:16688"]
    now[0] += 299.0
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
