"""What is in flight through the inbound proxy, and who has been calling.

`InflightTracker` counts requests and keeps two events, so a drain can wait without polling:
`idle` is set while nothing is in flight, `arrived` is set by each new request. The quiet-period
wait sleeps until the quiet deadline *or* the next arrival, whichever comes first.

`ConsumerBook` remembers the admin URLs of consumer sidecars (`X-Sidecar-Consumer`) that called
recently, bounded in size and age, so the offline sequence knows whom to notify.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import suppress
from urllib.parse import urlsplit


class InflightTracker:
    def __init__(self) -> None:
        self._count = 0
        self.streams = 0  # of which HTTP/2 streams
        self._idle = asyncio.Event()
        self._idle.set()
        self._arrived = asyncio.Event()
        self.last_arrival = 0.0  # time.monotonic() of the last request that came in

    @property
    def count(self) -> int:
        return self._count

    def begin(self, stream: bool = False) -> None:
        """One more request (or HTTP/2 `stream`) in flight, until its `end()` (a try/finally
        in the caller: this runs for every request, where a context manager costs more)."""
        self._count += 1
        self.streams += stream
        self.last_arrival = time.monotonic()
        self._idle.clear()
        self._arrived.set()

    def end(self, stream: bool = False) -> None:
        self._count -= 1
        self.streams -= stream
        if self._count == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once nothing is in flight."""
        await self._idle.wait()

    async def wait_quiet(self, quiet_period: float, since: float) -> None:
        """Return once nothing is in flight and no request arrived during the last
        `quiet_period` seconds, counting no earlier than `since` (a monotonic time)."""
        while True:
            await self._idle.wait()
            quiet_until = max(self.last_arrival, since) + quiet_period
            remaining = quiet_until - time.monotonic()
            if remaining <= 0:
                if self._count == 0:
                    return
                continue
            self._arrived.clear()
            # Not polling: this wakes on the next arrival or when the quiet window has passed.
            # (asyncio.timeout, not wait_for: on Python 3.11, wait_for returns the result of an
            # arrival that came just before a cancel and loses the cancel. The drain's deadline
            # is such a cancel: under steady load, drains outlived --drain-timeout.)
            with suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()


# A fleet-wide bound: thousands of consumer sidecars would be unusual for one provider, and the
# oldest are the least likely to call again.
MAX_CONSUMERS = 4096
# "Consumers that called in the last minutes": a consumer idle for longer has refreshed its
# registry cache by now (caches refresh in 5 to 30 s).
CONSUMER_TTL_SECONDS = 300.0
MAX_CONSUMER_URL_LENGTH = 512


class ConsumerBook:
    def __init__(
        self,
        max_size: int = MAX_CONSUMERS,
        ttl: float = CONSUMER_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        # (header value, caller) -> the URL it names, for pairs already found valid: every
        # request of a consumer sidecar carries the header, and parsing it each time is waste.
        self._valid: dict[tuple[str, str], str] = {}
        self._max_size = max_size
        self._ttl = ttl
        self._clock = clock

    def remember(self, header_value: str, caller: str | None) -> bool:
        """Remember a consumer's admin URL; ignore (return False) anything that is not one.

        Only a URL whose host is the caller's own address is kept: notifications carry the
        fleet token, and must not go wherever an unauthenticated header says."""
        url = self._valid.get((header_value, caller or ""))
        if url is None:
            url = self._validate(header_value, caller)
            if url is None:
                return False
            if len(self._valid) >= 2 * self._max_size:
                self._valid.clear()
            self._valid[header_value, caller or ""] = url
        self._seen[url] = self._clock()
        self._seen.move_to_end(url)
        while len(self._seen) > self._max_size:
            self._seen.popitem(last=False)
        return True

    @staticmethod
    def _validate(header_value: str, caller: str | None) -> str | None:
        url = header_value.strip().rstrip("/")
        if len(url) > MAX_CONSUMER_URL_LENGTH or not url.isprintable() or not caller:
            return None
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
            host = ipaddress.ip_address(parts.hostname or "")
            if ipaddress.ip_address(caller) != host:
                return None
        except ValueError:
            return None
        if parts.scheme not in ("http", "https") or parts.query or parts.fragment or parts.username:
            return None
        return url

    def recent(self) -> list[str]:
        """Consumers seen within the TTL, oldest first; expired ones are forgotten."""
        horizon = self._clock() - self._ttl
        while self._seen:
            url, seen = next(iter(self._seen.items()))
            if seen >= horizon:
                break
            del self._seen[url]
        return list(self._seen)

    def __len__(self) -> int:
        return len(self.recent())
