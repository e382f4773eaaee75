"""Offline notifications: the provider tells every consumer sidecar that called it recently that
it is leaving, so they drop it within milliseconds instead of waiting 5 to 30 s for their
registry cache.

Sending is best effort, in parallel, with short timeouts and a few tries: a consumer that cannot
be reached will learn from the registry, the closing headers or a refused request instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
from collections.abc import Iterable
from urllib.parse import urlsplit

from sidecar.protocol.notice import OfflineNotice

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
# Visible ASCII and spaces only (no CR, LF or other controls) in what goes into the request head.
_HEADER_SAFE = re.compile(r"[\x20-\x7e]*")


class Notifier:
    """Async context manager that sends notifications, one short connection per consumer.

    Each is one small POST whose answer only matters by its status line, so it is written by
    hand on an asyncio connection rather than sent through httpx: httpx costs about 1.4 ms of CPU
    per request here, this about a tenth of it, which is what lets a provider notify 1,000
    consumers within a second (bench/notify_fanout.py). The consumer URL is one the provider
    saw a consumer call from (inflight.ConsumerBook): http or https, an IP literal host.
    """

    def __init__(self, token: str | None) -> None:
        self._auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self._tls: ssl.SSLContext | None = None
        self._open = False

    async def __aenter__(self) -> Notifier:
        self._open = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._open = False

    async def send_all(self, consumers: Iterable[str], notice: OfflineNotice) -> list[bool]:
        """Notify each consumer admin URL in parallel; one bool per consumer (True = answered 2xx)."""
        slots = asyncio.Semaphore(PARALLEL)
        return list(await asyncio.gather(*(self.send(url, notice, slots) for url in consumers)))

    async def send(
        self, consumer: str, notice: OfflineNotice, slots: asyncio.Semaphore | None = None
    ) -> bool:
        if not self._open:
            raise RuntimeError("Notifier used outside its 'async with' block")
        slots = slots or asyncio.Semaphore(1)
        body = json.dumps(notice.body()).encode()
        for attempt in range(1, TRIES + 1):
            try:
                async with slots, asyncio.timeout(TIMEOUT_SECONDS):
                    status = await self._post(consumer, body)
            except TimeoutError:
                log.info("notify %s: no answer within %g s", consumer, TIMEOUT_SECONDS)
                return False  # silent: asking again would only hold the drain longer
            except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
                # A notification is best effort: nothing a consumer URL does may stop a drain.
                log.info("notify %s: try %d failed: %s", consumer, attempt, exc.__class__.__name__)
            else:
                if 200 <= status < 300:
                    return True
                if status in (401, 403):
                    # The consumer's own admin API said no: a silence no counter explains.
                    log.warning(
                        "notify %s: refused with %d: give both sidecars the same --token"
                        " (or allow this sidecar's address with the consumer's --allow)",
                        consumer, status,
                    )  # fmt: skip
                    return False
                log.info("notify %s: try %d answered %d", consumer, attempt, status)
                if status < 500:
                    return False  # 4xx: asking again will not change the answer
            if attempt < TRIES:
                await asyncio.sleep(RETRY_PAUSE_SECONDS * attempt)
        return False

    async def _post(self, consumer: str, body: bytes) -> int:
        """POST `body` to `consumer`/notify; the response's status code."""
        url = urlsplit(consumer)
        if (
            url.scheme not in ("http", "https")
            or not url.hostname
            or not _HEADER_SAFE.fullmatch(consumer)
            or " " in consumer
        ):
            raise ValueError(f"not an http(s) URL fit for a request line: {consumer[:80]!r}")
        if not _HEADER_SAFE.fullmatch(self._auth.removesuffix("\r\n")):
            raise ValueError("the token cannot go into a header")
        tls = None
        if url.scheme == "https":
            tls = self._tls = self._tls or ssl.create_default_context()
        port = url.port or (443 if tls else 80)
        reader, writer = await asyncio.open_connection(url.hostname, port, ssl=tls)
        try:
            head = (
                f"POST {url.path.rstrip('/')}/notify HTTP/1.1\r\nHost: {url.netloc}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n{self._auth}\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            status_line = await reader.readuntil(b"\r\n")  # HTTP/1.1 204 No Content
            version, status, *_ = status_line.split(b" ", 2)
            if not version.startswith(b"HTTP/1.") or not status.isdigit():
                raise ValueError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
            return int(status)
        finally:
            writer.close()
