"""The app's health, as the provider side sees it: awaited before registration, then watched
until the app is lost, which is what takes the instance out of the registry (lifecycle.py).

The app is another process: polling its health URL is all there is, but the data path hears
of a crash first (a refused connection, a reset) and `suspect()` makes the check come at once
instead of at the next poll. One failed check proves little (a blip): it is confirmed by more
checks a short interval apart, so a crash is confirmed within about a second of the first
refused request, and within a poll interval more when no request comes.

What one check is depends on the app: `GET` of the health path (over HTTP/1.1, or over HTTP/2
with prior knowledge for an `h2c://` app), or with `--app-health grpc[:SERVICE]` the standard
gRPC health check (grpc_health.py). The cadence, the confirmations and suspect() are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from urllib.parse import urlsplit

import httpx

from sidecar.config import grpc_health_service
from sidecar.provider.grpc_health import GrpcTarget
from sidecar.provider.grpc_health import check as grpc_check

log = logging.getLogger("sidecar.lifecycle")

# Health polling of an app that is starting: often enough that registration follows readiness
# closely, rarely enough to be invisible in the app's logs and CPU.
HEALTH_POLL_SECONDS = 0.2
HEALTH_TIMEOUT_SECONDS = 2.0
# Once up, the app's health is checked every few seconds (and at once when the data path could
# not reach it). An idle instance whose app crashed is thus out of the registry within this
# plus the confirmation below, about 3 s, well within the 8 s aim.
HEALTH_WATCH_SECONDS = 2.0
# This many failed checks in a row mean the app is lost: one blip is not worth taking an
# instance out. The confirming checks come this far apart, not a poll interval: a crash under
# traffic is then out of the registry about 1 s after the first refused request (the aim: 3 s).
HEALTH_FAILURES_LOST = 3
HEALTH_CONFIRM_SECONDS = 0.5
# However many requests fail, checks come at most this often: each one is a request to the app.
HEALTH_MIN_GAP_SECONDS = 0.25


class AppHealth:
    """`healthy` as far as the last checks tell; True when there is no health URL to check.
    `lost` is set once the watch has confirmed that the app stopped answering. `last_check`
    says what the last check got, and what to do about a failure (for /status and the log)."""

    def __init__(self, url: str | None, grpc: GrpcTarget | None = None) -> None:
        """`url`: the health path's URL (`h2c://` for an app that speaks HTTP/2); `grpc`: the
        gRPC health check's target instead. Neither: the app is not checked."""
        self.url = url or (grpc.describe() if grpc is not None else None)  # as /status shows it
        self._grpc = grpc
        self._h2c = url is not None and url.startswith(H2C_PREFIX)
        self.healthy = True
        self.lost = asyncio.Event()
        self.last_check: str | None = None
        self._suspect = asyncio.Event()

    def suspect(self) -> None:
        """The data path could not reach the app (refused, reset, cut off): check it now."""
        self._suspect.set()

    async def wait_healthy(self) -> None:
        """Return once the app answers 2xx (at once without a health URL)."""
        if self.url is None:
            return
        async with self._client() as client:
            while not await self._check(client):  # noqa: ASYNC110 - another process
                await asyncio.sleep(HEALTH_POLL_SECONDS)
        self.healthy = True

    async def watch(self) -> None:
        """After start-up: check every HEALTH_WATCH_SECONDS, or as soon as the data path
        suspects the app; returns once HEALTH_FAILURES_LOST checks in a row failed, with
        `healthy` False and `lost` set. Without a health URL there is nothing to tell: it
        returns at once, `lost` never set."""
        if self.url is None:
            return
        async with self._client() as client:
            checked = time.monotonic()
            while True:
                self._suspect.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HEALTH_WATCH_SECONDS):
                        await self._suspect.wait()
                await asyncio.sleep(checked + HEALTH_MIN_GAP_SECONDS - time.monotonic())
                lost = await self._confirmed_lost(client)
                checked = time.monotonic()
                if lost:
                    break
        log.warning("app lost: %d health checks in a row failed", HEALTH_FAILURES_LOST)
        self.healthy = False
        self.lost.set()

    async def _confirmed_lost(self, client: httpx.AsyncClient) -> bool:
        """Check; a failure is confirmed by more checks HEALTH_CONFIRM_SECONDS apart."""
        assert self.url is not None
        for failed in range(HEALTH_FAILURES_LOST):
            if failed:
                await asyncio.sleep(HEALTH_CONFIRM_SECONDS)
            if await self._check(client):
                if failed:
                    log.info("app health: %d failed check(s), then a passing one: a blip", failed)
                return False
        return True

    async def _check(self, client: httpx.AsyncClient) -> bool:
        """One check; its outcome is logged when it differs from the last one (a poll five
        times a second says why once, not five times a second)."""
        assert self.url is not None
        if self._grpc is not None:
            passed, outcome = await grpc_check(self._grpc, HEALTH_TIMEOUT_SECONDS)
        elif self._h2c:
            passed, outcome = await _probe(client, "http://" + self.url.removeprefix(H2C_PREFIX), self.url)
        else:
            passed, outcome = await _probe(client, self.url)
        if outcome != self.last_check:
            log.log(logging.INFO if passed else logging.WARNING, "app health: %s", outcome)
            self.last_check = outcome
        return passed

    def _client(self) -> httpx.AsyncClient:
        """The HTTP client of the path checks: HTTP/2 with prior knowledge to an h2c app."""
        if self._h2c:
            return httpx.AsyncClient(timeout=HEALTH_TIMEOUT_SECONDS, trust_env=False, http1=False, http2=True)
        return httpx.AsyncClient(timeout=HEALTH_TIMEOUT_SECONDS, trust_env=False)


H2C_PREFIX = "h2c://"


def health_checks(app: str | None, app_health: str) -> tuple[str | None, GrpcTarget | None]:
    """What `--app` and `--app-health` ask to check: the health path's URL, or the target of the
    gRPC health check (`--app-health grpc[:SERVICE]`); (None, None) for no check."""
    if not app or not app_health:
        return None, None
    service = grpc_health_service(app_health)
    if service is None:
        return app + "/" + app_health.lstrip("/"), None
    parts = urlsplit(app)
    assert parts.hostname is not None  # validated by options: h2c:// has a host and a port
    assert parts.port is not None
    return None, GrpcTarget(parts.hostname, parts.port, service)


async def _probe(client: httpx.AsyncClient, url: str, shown: str | None = None) -> tuple[bool, str]:
    """Whether `url` answers 2xx, and what it got in words (`shown` naming it, for an h2c app),
    with what to do about a failure."""
    h2c = shown is not None
    shown = shown or url
    # A gRPC server answers a GET with a reset stream or an error status: its health is the
    # gRPC check's to tell.
    fix = "PATH (or grpc for a gRPC server)" if h2c else "PATH"
    try:
        status = (await client.get(url)).status_code
    except httpx.TimeoutException:
        return False, f"GET {shown} -> no answer within {HEALTH_TIMEOUT_SECONDS:g} s"
    except httpx.HTTPError as exc:
        reason = str(exc) or exc.__class__.__name__
        if h2c and isinstance(exc, httpx.RemoteProtocolError):
            return False, f"GET {shown} -> {reason}; set --app-health {fix}, or '' to skip the check"
        return False, f"GET {shown} -> {reason}; is the app listening there (--app)?"
    if 200 <= status < 300:
        return True, f"GET {shown} -> {status}"
    if status in (404, 405, 415):  # no such path: the default /health is the usual suspect
        return False, f"GET {shown} -> {status}; set --app-health {fix}, or '' to skip the check"
    return False, f"GET {shown} -> {status}"
