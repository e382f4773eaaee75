"""What an upstream without instances tells: the registry it reads and the services that registry
has, so that a caller asking for `orders` where the registry has `order` sees it at once.

One registry call (`Registry.services`) answers every request that meets an empty table for a
few seconds: a consumer answering 503 a thousand times a second asks the registry once per
LISTING_FRESH_SECONDS, not a thousand times. And a request waits for it at most
LISTING_WAIT_SECONDS, counted from the call's start: a registry that hangs costs the first
requests one second, and those behind them nothing.
"""

from __future__ import annotations

import asyncio
import difflib
from types import TracebackType
from typing import Any

from registry_adapters import Registry

# A listing this old is asked for again: new services show within seconds.
LISTING_FRESH_SECONDS = 5.0
# A registry answers a listing in milliseconds; a 503 does not wait longer than this for it.
LISTING_WAIT_SECONDS = 1.0
# A registry may hold thousands of services: a body lists this many, those nearest the name asked.
MAX_LISTED = 100


class ServiceListing:
    """Async context manager: the registry's services for the 503s of the upstream `service`."""

    def __init__(self, registry: Registry, service: str) -> None:
        self.registry = registry
        self.service = service
        self._call: asyncio.Future[list[str]] | None = None
        self._started = 0.0
        self._told: dict[str, Any] = {}
        self._told_of: asyncio.Future[list[str]] | None = None  # the listing `_told` comes from

    async def __aenter__(self) -> ServiceListing:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._call is not None:
            self._call.cancel()
            await asyncio.wait([self._call])

    async def told(self) -> dict[str, Any]:
        """`{"registry": "consul at 127.0.0.1:8500", "services": [...]}`, sorted; or with
        `"services_error"` instead when the listing failed or did not come in time."""
        now = asyncio.get_running_loop().time()
        call = self._call
        if call is None or (call.done() and now - self._started > LISTING_FRESH_SECONDS):
            self._started = now
            call = self._call = asyncio.ensure_future(self.registry.services())
            call.add_done_callback(_retrieved)
        wait = self._started + LISTING_WAIT_SECONDS - now
        if not call.done() and wait > 0:
            await asyncio.wait([call], timeout=wait)
        if not call.done():
            late = f"the registry did not list its services within {LISTING_WAIT_SECONDS:g} s"
            return {"registry": self.registry.where, "services_error": late}
        if self._told_of is not call:  # worked out once per listing, not per request
            self._told, self._told_of = self._tell(call), call
        return dict(self._told)

    def _tell(self, call: asyncio.Future[list[str]]) -> dict[str, Any]:
        told: dict[str, Any] = {"registry": self.registry.where}
        if call.cancelled() or (error := call.exception()) is not None:
            told["services_error"] = "cancelled" if call.cancelled() else str(error) or type(error).__name__
            return told
        names = call.result()
        if len(names) > MAX_LISTED:
            told["services_total"] = len(names)
            names = sorted(difflib.get_close_matches(self.service, names, MAX_LISTED, cutoff=0))
        told["services"] = names
        return told


def _retrieved(call: asyncio.Future[list[str]]) -> None:
    if not call.cancelled():
        call.exception()  # retrieved, even if no request is left to read it
