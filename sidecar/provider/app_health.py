"""The app's health, as the provider side sees it: awaited before registration, then watched so
that /ready follows it.

The app is another process: polling its health URL is all there is.
"""

from __future__ import annotations

import asyncio
import logging

import httpx

log = logging.getLogger("sidecar.lifecycle")

# Health polling of an app that is starting: often enough that registration follows readiness
# closely, rarely enough to be invisible in the app's logs and CPU.
HEALTH_POLL_SECONDS = 0.2
HEALTH_TIMEOUT_SECONDS = 2.0
# Once up, the app's health is checked every few seconds; this many failures in a row turn
# /ready to 503 (one blip is not worth taking an instance out), one success turns it back.
HEALTH_WATCH_SECONDS = 2.0
HEALTH_FAILURES_UNHEALTHY = 3


class AppHealth:
    """`healthy` as far as the last checks tell; True when there is no health URL to check."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self.healthy = True

    async def wait_healthy(self) -> None:
        """Return once the app answers 2xx (at once without a health URL)."""
        if self.url is None:
            return
        async with httpx.AsyncClient(timeout=HEALTH_TIMEOUT_SECONDS, trust_env=False) as client:
            while not await _healthy(client, self.url):  # noqa: ASYNC110 - another process
                await asyncio.sleep(HEALTH_POLL_SECONDS)

    async def watch(self) -> None:
        """After start-up, keep `healthy` up to date; runs until cancelled."""
        if self.url is None:
            return
        failures = 0
        async with httpx.AsyncClient(timeout=HEALTH_TIMEOUT_SECONDS, trust_env=False) as client:
            while True:
                await asyncio.sleep(HEALTH_WATCH_SECONDS)
                failures = 0 if await _healthy(client, self.url) else failures + 1
                healthy = failures < HEALTH_FAILURES_UNHEALTHY
                if healthy != self.healthy:
                    log.warning(
                        "app %s: /ready now %s",
                        "healthy again" if healthy else "unhealthy",
                        200 if healthy else 503,
                    )
                self.healthy = healthy


async def _healthy(client: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await client.get(url)).is_success
    except httpx.HTTPError:
        return False  # not up (yet), or not answering
