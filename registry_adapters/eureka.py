"""Eureka backend, through Eureka's REST API over httpx: what Spring Cloud Netflix's and
Netflix's Eureka clients register, renew and read.

Features
--------
- Register: `POST /apps/APP` with the instance's `InstanceInfo` (`eureka_layout.record`: its
  address and port, status UP, its lease terms, the `sidecar_*` keys and `weight` in the
  metadata, the health and status pages at the sidecar's admin API), then `DELETE
  /apps/APP/ID/status` so that no status override left by an earlier life of the same id (set
  offline, then killed) keeps it out.
- A task renews the lease (`PUT /apps/APP/ID`) every TTL/3; a renewal answered 404 (the server
  evicted or forgot the instance: a restart, a lease that ran out) registers it again, as does
  the next renewal after a change that failed while the server was away. A sidecar killed with
  SIGKILL leaves its record until the server evicts it: after about twice the TTL (Eureka's
  lease arithmetic), on the server's eviction timer (60 s by default), and never while the
  server is in self-preservation (see the README).
- Weight and metadata: a weight change registers the instance again with the new metadata
  (`weight`, which Spring Cloud LoadBalancer's weighted supplier reads, and `sidecar_weight`);
  a registration is how Eureka replaces a whole record, and keeps its status override.
- Out of rotation (`set_offline`, weight 0): status `OUT_OF_SERVICE` (`PUT
  /apps/APP/ID/status`), the Eureka way to take a running instance out: Eureka's and Spring's
  clients send nothing to it. A weight above 0 removes that override again, never after
  `set_offline`. `deregister` cancels the lease (`DELETE /apps/APP/ID`).
- `watch` does what a Eureka client does, every `fetch_interval` (1 s; Eureka's clients take 30
  s): one full fetch (`GET /apps`), then deltas (`GET /apps/delta`) applied to its copy of the
  whole registry, and a full fetch again when the copy's hash code differs from the server's.
  It yields the UP instances of the service with a weight above 0, on change.
- Several servers (a Eureka cluster replicates between its peers): each call goes first to the
  one that answered last, then to the others; `RegistryUnavailable` when none answered.
- `services` lists the applications with instances, by the name their instances registered
  (`vipAddress`), else Spring's lower-case app name. Eureka's app names are case-insensitive:
  `Orders` and `orders` are one application there.
- `close()` stops the renewals and leaves the records to expire; it does not deregister.

Connection string
-----------------
`eureka://HOST[:PORT][/PATH][,HOST[:PORT][/PATH]...][?ttl=SECONDS]`: PORT defaults to 8761 and
PATH to `/eureka`, the service URL a Eureka client is given (`eureka.client.service-url`);
`ttl` is the lease duration in whole seconds (default 10, renewed every third of it). Plain
HTTP, no authentication.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import SplitResult, quote

import httpx

from registry_adapters import eureka_layout as layout
from registry_adapters.base import Instance, RegistryUnavailable, RegistryURLError
from registry_adapters.http_servers import HttpServers
from registry_adapters.keepalive import Beats, Published, Publisher
from registry_adapters.reasons import told
from registry_adapters.urls import BadHost, host_list, query_options

log = logging.getLogger(__name__)

DEFAULT_PORT = 8761
DEFAULT_PATH = "/eureka"
# Two lost renewals at TTL/3 are tolerated before the lease can run out.
DEFAULT_TTL_S = 10.0
# A Eureka server answers in milliseconds; beyond this it is unwell.
DEFAULT_CALL_TIMEOUT_S = 5.0
# How often a watch fetches the registry's delta: a consumer sidecar learns of a change within
# this (plus the server's read-only cache, 30 s unless turned off). One small request a second.
DEFAULT_FETCH_S = 1.0
JSON = {"Accept": "application/json"}


@dataclass(slots=True, kw_only=True)
class _Published(Published):
    """What this process wants Eureka to show for one instance, and whether the server may hold
    a status override for it (set by us, or left by an earlier life of the id: assumed at
    registration)."""

    overridden: bool = True


class EurekaRegistry(Publisher[_Published]):
    kind = "eureka"

    def __init__(
        self,
        servers: list[str] | None = None,
        *,
        ttl: float = DEFAULT_TTL_S,
        beat_interval: float | None = None,
        call_timeout: float = DEFAULT_CALL_TIMEOUT_S,
        fetch_interval: float = DEFAULT_FETCH_S,
    ) -> None:
        super().__init__()
        servers = servers or [f"http://127.0.0.1:{DEFAULT_PORT}{DEFAULT_PATH}"]
        self._servers = HttpServers("eureka", servers, timeout=call_timeout, headers=JSON)
        self.where = self._servers.where
        self._fetch_interval = fetch_interval
        self._lease_s = max(1, math.ceil(ttl))
        beat_interval = beat_interval if beat_interval is not None else self._lease_s / 3
        self._renew_s = max(1, math.ceil(beat_interval))
        self._beats = Beats("eureka lease renewal", beat_interval, self._beat, log)
        self._dirty_ms = 0

    @classmethod
    def from_url(cls, parts: SplitResult, **options: Any) -> Self:
        shown = f"{parts.scheme}://{parts.netloc}{parts.path}"
        usage = "expected eureka://HOST[:PORT][/PATH][,HOST[:PORT][/PATH]...][?ttl=SECONDS]"
        if parts.fragment or "@" in parts.netloc:
            raise RegistryURLError(f"registry URL {shown!r}: {usage}")
        servers = []
        for entry in (parts.netloc + parts.path).split(","):
            host, slash, path = entry.partition("/")
            try:
                [address] = host_list(host, DEFAULT_PORT)
            except BadHost:
                raise RegistryURLError(
                    f"bad host or port {host!r} in registry URL {shown!r}: {usage}"
                ) from None
            path = "/" + path.strip("/") if slash and path.strip("/") else DEFAULT_PATH
            servers.append(f"http://{address}{path}")
        query = query_options(parts, shown, ["ttl"])
        if (ttl := query.get("ttl")) is not None:
            if not ttl.isdigit() or not 1 <= int(ttl) <= 3600:
                raise RegistryURLError(f"registry URL {shown!r}: ttl must be whole seconds, 1..3600")
            options.setdefault("ttl", float(ttl))
        return cls(servers, **options)

    async def register(self, instance: Instance) -> None:
        self._check_open()
        async with self._lock:
            old = self._published.get(instance.instance_id)
            if old is not None and layout.app_name(old.instance.service) != layout.app_name(instance.service):
                await self._call("DELETE", _path(old.instance), "cancel", missing_ok=True)
            published = _Published(instance)
            await self._publish(published)
            self._published[instance.instance_id] = published
            self._beats.start(instance.instance_id)

    async def watch(self, service: str) -> AsyncGenerator[list[Instance], None]:
        self._check_open()
        app = layout.app_name(service)
        registry: dict[tuple[str, str], dict[str, Any]] = {}  # (app, instance id) -> InstanceInfo
        full = True
        last: list[Instance] | None = None
        while True:
            if full:
                apps = layout.applications(await self._read("/apps", "fetch"))
                registry = {
                    (str(a.get("name")), str(i.get("instanceId"))): i
                    for a in apps
                    for i in layout.instances_of(a)
                }
            else:
                delta = await self._read("/apps/delta", "fetch delta")
                for a in layout.applications(delta):
                    for info in layout.instances_of(a):
                        key = (str(a.get("name")), str(info.get("instanceId")))
                        if info.get("actionType") == "DELETED":
                            registry.pop(key, None)
                        else:
                            registry[key] = info
                if layout.hashcode(registry.values()) != delta["applications"].get("apps__hashcode", ""):
                    full = True  # the copy drifted (a delta missed): fetch everything now
                    continue
            full = False
            current = sorted(
                (
                    i
                    for (name, _), info in registry.items()
                    if name == app and (i := layout.instance(info, service)) is not None and i.weight > 0
                ),
                key=lambda i: i.instance_id,
            )
            if current != last:
                last = current
                yield current
            await asyncio.sleep(self._fetch_interval)

    async def services(self) -> list[str]:
        self._check_open()
        apps = layout.applications(await self._read("/apps", "fetch"))
        return sorted({name for app in apps if (name := layout.service_of(app))})

    async def close(self) -> None:
        self._closed = True
        await self._beats.stop()
        await self._servers.aclose()

    # -- internals ------------------------------------------------------------------------------

    async def _show(self, published: _Published, *, weight_changed: bool) -> None:
        if weight_changed:
            await self._publish(published)
        else:
            await self._show_status(published)

    async def _publish(self, published: _Published) -> None:
        """Register the record as it is wanted, then its status."""
        body = layout.record(
            published.instance, lease_s=self._lease_s, renew_s=self._renew_s, dirty_ms=self._dirty()
        )
        await self._call("POST", _path(published.instance, app_only=True), "register", json=body)
        await self._show_status(published)

    async def _show_status(self, published: _Published) -> None:
        """OUT_OF_SERVICE while out of rotation; else no override (once one may be there)."""
        path = f"{_path(published.instance)}/status"
        if not published.in_rotation:
            await self._call("PUT", path, "set out of service", params={"value": layout.OUT_OF_SERVICE})
            published.overridden = True
        elif published.overridden:
            await self._call("DELETE", path, "clear status", params={"value": layout.UP})
            published.overridden = False
        published.synced = True

    async def _withdraw(self, instance_id: str, published: _Published | None) -> None:
        if published is None:
            return
        await self._beats.stop([instance_id])
        await self._call("DELETE", _path(published.instance), "cancel", missing_ok=True)
        del self._published[instance_id]

    async def _beat(self, instance_id: str) -> bool:
        """Renew the lease; register again what Eureka lost or missed."""
        if (seen := self._published.get(instance_id)) is None:
            return False
        renewal = await self._call("PUT", _path(seen.instance), "renew", missing_ok=True)
        async with self._lock:
            if (published := self._published.get(instance_id)) is not seen:
                return published is not None  # registered again or withdrawn meanwhile
            if renewal.status_code == 404:
                log.warning("eureka lost %s (evicted or restarted); registering it again", instance_id)
                published.synced, published.overridden = False, True
            if not published.synced:
                await self._publish(published)
            return True

    def _dirty(self) -> int:
        """A `lastDirtyTimestamp` later than every one sent before (the server keeps the newer)."""
        self._dirty_ms = max(self._dirty_ms + 1, time.time_ns() // 1_000_000)
        return self._dirty_ms

    async def _read(self, path: str, what: str) -> dict[str, Any]:
        response = await self._call("GET", path, what)
        try:
            body = response.json()
            layout.applications(body)
        except ValueError:
            raise RegistryUnavailable(
                told(self.where, "an answer that is no Eureka registry", what)
            ) from None
        return dict(body)

    async def _call(self, method: str, path: str, what: str, **request: Any) -> httpx.Response:
        self._check_open()
        return await self._servers.call(method, path, what, **request)


def _path(instance: Instance, *, app_only: bool = False) -> str:
    """`/apps/APP[/ID]`, each part percent-encoded as a path segment."""
    app = f"/apps/{quote(layout.app_name(instance.service), safe='')}"
    return app if app_only else f"{app}/{quote(instance.instance_id, safe='')}"
