"""Offline notifications: the provider tells every consumer sidecar that called it recently that
it is leaving, so they drop it within milliseconds instead of waiting 5 to 30 s for their
registry cache.

Sending is best effort, in parallel, with short timeouts and a few tries: a consumer that cannot
be reached will learn from the registry, the closing headers or a refused request instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

log = logging.getLogger("sidecar.notify")

# A notification matters only while the drain lasts; a consumer slower than this is treated as
# gone, and is not asked again: the drain waits for every notification, so one silent consumer
# may hold it for one timeout, never for several. Three tries cover a consumer's admin server
# restarting (connection refused, a 5xx), which fails fast.
TIMEOUT_SECONDS = 2.0
TRIES = 3
RETRY_PAUSE_SECONDS = 0.2
# At most this many notifications (sockets) in flight. Silent consumers hold a slot for a whole
# timeout each; with 256 slots, a hundred of them still leave most slots to the answering ones,
# so 1,000 consumers on a LAN are notified well within a second (bench/notify_fanout.py). A
# slot is held for one try, not during the pause before the next.
PARALLEL = 256


@dataclass(frozen=True, slots=True)
class OfflineNotice:
    service: str
    instance_id: str
    address: str  # host:port as published in the registry

    def body(self) -> dict[str, str]:
        return {
            "service": self.service,
            "instance_id": self.instance_id,
            "address": self.address,
            "event": "offline",
        }


class Notifier:
    """Async context manager owning the HTTP client used for notifications."""

    def __init__(self, token: str | None) -> None:
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Notifier:
        # One request per consumer: no connection is kept after its answer.
        limits = httpx.Limits(max_connections=PARALLEL, max_keepalive_connections=0)
        self._client = httpx.AsyncClient(
            timeout=TIMEOUT_SECONDS, limits=limits, headers=self._headers, trust_env=False
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def send_all(self, consumers: Iterable[str], notice: OfflineNotice) -> list[bool]:
        """Notify each consumer admin URL in parallel; one bool per consumer (True = answered 2xx)."""
        slots = asyncio.Semaphore(PARALLEL)
        return list(await asyncio.gather(*(self.send(url, notice, slots) for url in consumers)))

    async def send(
        self, consumer: str, notice: OfflineNotice, slots: asyncio.Semaphore | None = None
    ) -> bool:
        if self._client is None:
            raise RuntimeError("Notifier used outside its 'async with' block")
        slots = slots or asyncio.Semaphore(1)
        for attempt in range(1, TRIES + 1):
            try:
                async with slots:
                    response = await self._client.post(f"{consumer}/notify", json=notice.body())
            except httpx.TimeoutException:
                log.info("notify %s: no answer within %g s", consumer, TIMEOUT_SECONDS)
                return False  # silent: asking again would only hold the drain longer
            except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
                # A notification is best effort: nothing a consumer URL does may stop a drain.
                log.info("notify %s: try %d failed: %s", consumer, attempt, exc.__class__.__name__)
            else:
                if response.is_success:
                    return True
                log.info("notify %s: try %d answered %d", consumer, attempt, response.status_code)
                if response.status_code < 500:
                    return False  # 4xx: asking again will not change the answer
            if attempt < TRIES:
                await asyncio.sleep(RETRY_PAUSE_SECONDS * attempt)
        return False
