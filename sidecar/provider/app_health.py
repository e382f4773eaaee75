"""The app's health, as the provider side sees it: awaited before registration, then watched
until the app is lost, which is what takes the instance out of the registry (lifecycle.py).

The app is another process: polling its health URL is all there is, but the data path hears
of a crash first (a refused connection, a reset) and `suspect()` makes the check come at once
instead of at the next poll. One failed check proves little (a blip): it is confirmed by more
checks a short interval apart, so a crash is confirmed within about a second of the first
refused request, and within a poll interval more when no request comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import httpx

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

    def __init__(self, url: str | None) -> None:
        self.url = url
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
        async with httpx.AsyncClient(timeout=HEALTH_TIMEOUT_SECONDS, trust_env=False) as client:
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
        async with httpx.AsyncClient(timeout=HEALTH_TIMEOUT_SECONDS, trust_env=False) as client:
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
        passed, outcome = await _probe(client, self.url)
        if outcome != self.last_check:
            log.log(logging.INFO if passed else logging.WARNING, "app health: %s", outcome)
            self.last_check = outcome
        return passed


async def _probe(client: httpx.AsyncClient, url: str) -> tuple[bool, str]:
    """Whether `url` answers 2xx, and what it got in words, with what to do about a failure."""
    try:
        status = (await client.get(url)).status_code
    except httpx.TimeoutException:
        return False, f"GET {url} -> no answer within {HEALTH_TIMEOUT_SECONDS:g} s"
    except httpx.HTTPError as exc:
        reason = str(exc) or exc.__class__.__name__
        return False, f"GET {url} -> {reason}; is the app listening there (--app)?"
    if 200 <= status < 300:
        return True, f"GET {url} -> {status}"
    if status in (404, 405):  # no such path: the default /health is the usual suspect
        return False, f"GET {url} -> {status}; set --app-health PATH, or '' to skip the check"
    return False, f"GET {url} -> {status}"
