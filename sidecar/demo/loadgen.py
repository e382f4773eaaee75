"""A load generator for the demo, the end-to-end tests and the benchmarks.

It keeps a fixed number of requests in flight against the demo app's `/work?ms=N` (N drawn from
a range), from a thread and event loop of its own, so that whoever drives it can block (start
processes, wait for probes) without pausing the load. Every request becomes a `Sample`:
when it started, how long it took, its status, and which instance answered.

Requests are POSTs with a small body by default: a non-idempotent method, which no proxy may
retry once sent. A lossless roll must therefore come from draining, not from retries.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from types import TracebackType

import httpx

BODY = b'{"order": 42}'


@dataclass(frozen=True, slots=True)
class Sample:
    started: float  # time.monotonic()
    seconds: float
    status: int  # 0 when no HTTP response came back
    instance: str  # the demo app instance that answered, "" if none
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and bool(self.instance)


class LoadGenerator:
    """`failure_text`: how much of a failed response's body to keep in `Sample.error` (the soak
    classifies failures by what they said). `refused_pause`: how long a client waits after a
    refused connection before its next request (0: at once). `keepalive_expiry`: how long an idle
    connection is reused (httpx's default; a client pooling connections to a sidecar whose
    --idle-timeout is shorter must reuse them for less, as the sidecar's `Keep-Alive: timeout=N`
    says, or a request can go out on a connection the sidecar is closing)."""

    def __init__(
        self,
        url: str,
        concurrency: int = 32,
        work_ms: tuple[int, int] = (20, 300),
        method: str = "POST",
        *,
        name: str = "load",
        failure_text: int = 0,
        refused_pause: float = 0.0,
        keepalive_expiry: float = 5.0,
    ) -> None:
        self.url = url.rstrip("/") + "/work"
        self.concurrency = concurrency
        self.work_ms = work_ms
        self.method = method
        self.name = name
        self.failure_text = failure_text
        self.refused_pause = refused_pause
        self.keepalive_expiry = keepalive_expiry
        self.samples: list[Sample] = []
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> LoadGenerator:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(60)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        limits = httpx.Limits(
            max_connections=self.concurrency * 2,
            max_keepalive_connections=self.concurrency,
            keepalive_expiry=self.keepalive_expiry,
        )
        async with httpx.AsyncClient(timeout=60, limits=limits, trust_env=False) as client:
            self._started.set()
            await asyncio.gather(*(self._client(client, self._stop) for _ in range(self.concurrency)))

    async def _client(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        rng = random.Random()
        while not stop.is_set():
            started = time.monotonic()
            params = {"ms": rng.randint(*self.work_ms)}
            try:
                response = await client.request(self.method, self.url, params=params, content=BODY)
                try:
                    instance = str(response.json().get("instance", "")) if response.status_code == 200 else ""
                except ValueError:
                    instance = ""
                said = response.text[: self.failure_text] if response.status_code != 200 else ""
                self.samples.append(
                    Sample(started, time.monotonic() - started, response.status_code, instance, said)
                )
            except httpx.HTTPError as exc:
                self.samples.append(
                    Sample(started, time.monotonic() - started, 0, "", exc.__class__.__name__)
                )
                if isinstance(exc, httpx.ConnectError) and self.refused_pause:
                    await asyncio.sleep(self.refused_pause)  # an app does not spin on a refused port

    # --- summaries

    def failures(self) -> list[Sample]:
        return [sample for sample in self.samples if not sample.ok]

    def shares(self, start: float, end: float) -> dict[str, float]:
        """Each instance's share of the requests started in [start, end)."""
        counts = Counter(s.instance for s in self.samples if start <= s.started < end and s.ok)
        total = sum(counts.values())
        return {instance: count / total for instance, count in counts.items()} if total else {}
