"""Nacos backend, through Nacos's open API (v2 HTTP, form bodies) over httpx: ephemeral
instances kept alive by heartbeats, as Nacos's HTTP clients (and Spring Cloud Alibaba's and
Dubbo's, over gRPC) register them.

Features
--------
- Register: `POST /v2/ns/instance`, an ephemeral instance of the URL's namespace and group, at
  the instance's address in Nacos's `DEFAULT` cluster, with its weight (Nacos's weight, 0 to
  10000, which Nacos's clients balance by), `enabled`, and in the metadata every `sidecar_*` key,
  the instance id (`sidecar_instance_id`: Nacos names an instance by its address) and the lease
  terms (`preserved.*`, from the TTL). A registration replaces the whole record, so every
  change (a weight, offline) registers it again as it is wanted. Not `PUT /v2/ns/instance`:
  that is the operator's override, kept beside the client's record (its metadata merged over
  it, its weight and `enabled` winning) and even after the instance is gone.
- Nacos names an instance by address: two instance ids at one address of one service are one
  Nacos instance, the last registered.
- A task beats (`PUT /v2/ns/instance/beat`) every TTL/3; a beat answered 20404 (the server lost
  the instance: a restart, a lease that ran out) registers it again, as does the next beat
  after a change that failed while the server was away. A sidecar killed with SIGKILL leaves
  its instance, which turns unhealthy after the TTL (on the server's check, every 5 s) and is
  deleted after twice the TTL.
- Out of rotation (`set_offline`, weight 0): `enabled=false`, which takes the instance out of
  every list Nacos hands out while it runs. `deregister` deletes it (`DELETE /v2/ns/instance`).
- `watch` polls the healthy instances (`GET /v2/ns/instance/list?healthyOnly=true`) every
  `poll_interval` (1 s) and yields the enabled ones of a weight above 0, on change.
- `services` lists the services of the group with instances (`GET /v1/ns/catalog/services`).
- Several servers (a Nacos cluster shares its instances): each call goes first to the one that
  answered last, then to the others; `RegistryUnavailable` when none answered.
- `close()` stops the heartbeats and leaves the instances to expire; it does not deregister.

Connection string
-----------------
`nacos://HOST[:PORT][,HOST[:PORT]...][?namespace=ID&group=NAME&ttl=SECONDS]`: PORT defaults to
8848 (the API is at `/nacos`), the namespace to `public`, the group to `DEFAULT_GROUP`; `ttl`
is the silence in whole seconds after which an instance turns unhealthy (default 10, a beat
every third of it). Plain HTTP, no authentication. A Nacos 3 server serves this API only with
`nacos.core.api.compatibility.admin.enabled=true` (and `...console.enabled=true` for
`services`); a Nacos 2 server serves it as is.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncGenerator
from typing import Any, Self
from urllib.parse import SplitResult

import httpx

from registry_adapters import nacos_layout as layout
from registry_adapters.base import Instance, RegistryUnavailable, RegistryURLError
from registry_adapters.http_servers import HttpServers
from registry_adapters.keepalive import Beats, Published, Publisher
from registry_adapters.reasons import MAX_REASON_CHARS, told
from registry_adapters.urls import BadHost, host_list, query_options

log = logging.getLogger(__name__)

DEFAULT_PORT = 8848
CONTEXT_PATH = "/nacos"
# Two lost beats at TTL/3 are tolerated before the instance turns unhealthy.
DEFAULT_TTL_S = 10.0
# A Nacos server answers in milliseconds; beyond this it is unwell.
DEFAULT_CALL_TIMEOUT_S = 5.0
# How often a watch reads the instance list: a consumer sidecar learns of a change within this
# (plus the server's own delay, about 0.5 s). One small request a second.
DEFAULT_POLL_S = 1.0
# The catalog's page: one page holds every service of most namespaces.
SERVICES_PAGE = 500
# Nacos's own patterns for namespace ids and group names (its ParamChecker), and their words.
_SCOPE = {
    "namespace": (re.compile(r"^[\w-]{1,128}$"), "letters, digits, _ and -"),
    "group": (re.compile(r"^[\w.:-]{1,128}$"), "letters, digits, _ . : and -"),
}
# A heartbeat's answer for an instance the server does not hold (NamingResponseCode).
RESOURCE_NOT_FOUND = 20404
# What Nacos 3 answers to the 2.x open API while its compatibility layer is off.
GONE = 410
INSTANCE = "/v2/ns/instance"


class NacosRegistry(Publisher[Published]):
    kind = "nacos"

    def __init__(
        self,
        servers: list[str] | None = None,
        *,
        namespace: str = layout.DEFAULT_NAMESPACE,
        group: str = layout.DEFAULT_GROUP,
        ttl: float = DEFAULT_TTL_S,
        beat_interval: float | None = None,
        call_timeout: float = DEFAULT_CALL_TIMEOUT_S,
        poll_interval: float = DEFAULT_POLL_S,
    ) -> None:
        super().__init__()
        self._servers = HttpServers(
            "nacos",
            servers or [f"http://127.0.0.1:{DEFAULT_PORT}{CONTEXT_PATH}"],
            timeout=call_timeout,
            shown=lambda server: server.removeprefix("http://").removesuffix(CONTEXT_PATH),
            refusal=_refusal,
        )
        self.where = self._servers.where
        self._scope = {"namespaceId": namespace, "groupName": group}
        self._group = group
        self._poll_interval = poll_interval
        beat_interval = beat_interval if beat_interval is not None else ttl / 3
        self._ttl_ms = max(1000, round(ttl * 1000))
        self._beat_ms = max(100, round(beat_interval * 1000))
        self._beats = Beats("nacos heartbeat", beat_interval, self._beat, log)

    @classmethod
    def from_url(cls, parts: SplitResult, **options: Any) -> Self:
        shown = f"{parts.scheme}://{parts.netloc}{parts.path}"
        usage = "expected nacos://HOST[:PORT][,HOST[:PORT]...][?namespace=ID&group=NAME&ttl=SECONDS]"
        if parts.fragment or "@" in parts.netloc or parts.path.strip("/"):
            raise RegistryURLError(f"registry URL {shown!r}: {usage}")
        try:
            hosts = host_list(parts.netloc, DEFAULT_PORT)
        except BadHost as exc:
            raise RegistryURLError(
                f"bad host or port {exc.entry!r} in registry URL {shown!r}: {usage}"
            ) from None
        query = query_options(parts, shown, ["namespace", "group", "ttl"])
        if (ttl := query.get("ttl")) is not None:
            if not ttl.isdigit() or not 1 <= int(ttl) <= 3600:
                raise RegistryURLError(f"registry URL {shown!r}: ttl must be whole seconds, 1..3600")
            options.setdefault("ttl", float(ttl))
        for name, (pattern, allowed) in _SCOPE.items():
            if (value := query.get(name)) is not None:
                if not pattern.match(value):
                    raise RegistryURLError(f"registry URL {shown!r}: {name} must be {allowed}, 1..128")
                options.setdefault(name, value)
        return cls([f"http://{host}{CONTEXT_PATH}" for host in hosts], **options)

    async def register(self, instance: Instance) -> None:
        self._check_open()
        async with self._lock:
            old = self._published.get(instance.instance_id)
            if old is not None and layout.address(old.instance) != layout.address(instance):
                await self._call(
                    "DELETE", INSTANCE, "deregister", params=self._form(layout.address(old.instance))
                )
            published = Published(instance)
            await self._publish(published)
            self._published[instance.instance_id] = published
            self._beats.start(instance.instance_id)

    async def watch(self, service: str) -> AsyncGenerator[list[Instance], None]:
        self._check_open()
        params = self._form({"serviceName": service, "healthyOnly": "true"})
        last: list[Instance] | None = None
        while True:
            response = await self._call("GET", f"{INSTANCE}/list", "list instances", params=params)
            try:
                hosts = layout.hosts(response.json())
            except ValueError:
                raise RegistryUnavailable(
                    told(self.where, "an answer that is no Nacos instance list", "list instances")
                ) from None
            current = sorted(
                (i for host in hosts if (i := layout.instance(host, service)) is not None),
                key=lambda i: i.instance_id,
            )
            if current != last:
                last = current
                yield current
            await asyncio.sleep(self._poll_interval)

    async def services(self) -> list[str]:
        self._check_open()
        names: set[str] = set()
        page = 1
        while True:
            params = self._form(
                {"groupNameParam": self._group, "withInstances": "false", "pageNo": str(page)},
                pageSize=str(SERVICES_PAGE),
            )
            response = await self._call("GET", "/v1/ns/catalog/services", "list services", params=params)
            try:
                body = response.json()
                items, count = list(body["serviceList"]), int(body["count"])
                names.update(
                    str(item["name"])
                    for item in items
                    if item.get("groupName") == self._group and int(item.get("ipCount", 0)) > 0
                )
            except (ValueError, TypeError, KeyError, AttributeError):
                raise RegistryUnavailable(
                    told(self.where, "an answer that is no Nacos service list", "list services")
                ) from None
            if not items or page * SERVICES_PAGE >= count:
                return sorted(names)
            page += 1

    async def close(self) -> None:
        self._closed = True
        await self._beats.stop()
        await self._servers.aclose()

    # -- internals ------------------------------------------------------------------------------

    async def _show(self, published: Published, *, weight_changed: bool) -> None:
        await self._publish(published)

    async def _publish(self, published: Published) -> None:
        """Register the whole record as it is wanted (enabled only while in rotation)."""
        form = layout.record(
            published.instance, in_rotation=published.in_rotation, ttl_ms=self._ttl_ms, beat_ms=self._beat_ms
        )
        await self._call("POST", INSTANCE, "register", data=self._form(form))
        published.synced = True

    async def _withdraw(self, instance_id: str, published: Published | None) -> None:
        if published is None:
            return
        await self._beats.stop([instance_id])
        await self._call(
            "DELETE", INSTANCE, "deregister", params=self._form(layout.address(published.instance))
        )
        del self._published[instance_id]

    async def _beat(self, instance_id: str) -> bool:
        """Beat; register again what Nacos lost or missed."""
        if (seen := self._published.get(instance_id)) is None:
            return False
        form = self._form(
            layout.beat(seen.instance), serviceName=layout.grouped(seen.instance.service, self._group)
        )
        answer = await self._call("PUT", f"{INSTANCE}/beat", "heartbeat", data=form)
        async with self._lock:
            if (published := self._published.get(instance_id)) is not seen:
                return published is not None  # registered again or withdrawn meanwhile
            if _code(answer) == RESOURCE_NOT_FOUND:
                log.warning("nacos lost %s (expired or restarted); registering it again", instance_id)
                published.synced = False
            if not published.synced:
                await self._publish(published)
            return True

    def _form(self, fields: dict[str, str], **more: str) -> dict[str, str]:
        """`fields` in the URL's namespace and group."""
        return {**fields, **self._scope, **more}

    async def _call(self, method: str, path: str, what: str, **request: Any) -> httpx.Response:
        self._check_open()
        return await self._servers.call(method, path, what, **request)


def _code(response: httpx.Response) -> int | None:
    """The `code` of a Nacos JSON answer, if it has one."""
    try:
        code = response.json().get("code")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, int) else None


def _refusal(response: httpx.Response) -> str:
    """Why Nacos refused: its status, and its own words (`data` or `message`, else the text)."""
    try:
        body = response.json()
        detail = str(body.get("data") or body.get("message") or "")
    except (ValueError, AttributeError):
        detail = response.text
    if response.status_code == GONE:
        detail = "this API is off: a Nacos 3 server needs nacos.core.api.compatibility.admin.enabled=true"
        detail += " (and console.enabled=true for listing services)"
    detail = " ".join(detail.split())[:MAX_REASON_CHARS]
    return f"{response.status_code} {detail or response.reason_phrase}".strip()
