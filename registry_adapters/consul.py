"""Consul backend, through the local agent's HTTP API (py-consul's asyncio client).

Features
--------
- `register` publishes the instance on the agent with its address, port, metadata and
  `Weights {"Passing": weight, "Warning": 1}` (what Consul DNS SRV answers carry; also as
  `Meta.weight`, for Spring Cloud Consul), and ONE TTL
  check that a background task keeps passing. A sidecar killed with SIGKILL stops passing it:
  the instance turns critical after the TTL and Consul reaps it one minute later.
- The beat notices when the agent has forgotten the check (a restarted dev agent, a lost data
  dir) and registers the instance again from the copy kept here, maintenance mode included; it
  also publishes again a weight or offline change that failed (the agent did not answer).
- Consul weights must be >= 1, so weight 0 and `set_offline` use service maintenance mode; a
  later weight > 0 lifts the weight-0 maintenance, never an offline one.
- `watch` uses blocking queries on `/v1/health/service/NAME?passing=1`: only instances that
  should get traffic, no polling. Malformed entries are logged and skipped.
- `set_weight` and `set_offline` act on instances registered through this object (`set_weight`
  of another one is rejected, `set_offline` of another one does nothing).
- `services` lists the catalog's services (`/v1/catalog/services`): every service with an
  instance on some agent, passing or not, `consul` itself included.
- `close()` stops the beats and leaves the instances to expire; it does not deregister.

Connection string
-----------------
`consul://HOST[:PORT][?token=ACL_TOKEN]`, PORT defaults to 8500. Plain HTTP to an agent,
normally the one on the same host (`consul://127.0.0.1:8500`). A token in the URL wins over
`CONSUL_HTTP_TOKEN`; without one, py-consul uses that variable.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import AsyncGenerator, Awaitable
from typing import Any, Self
from urllib.parse import SplitResult

import aiohttp
import consul.aio
from consul.exceptions import ACLDisabled, ACLPermissionDenied, BadRequest, ClientError, ConsulException

from registry_adapters.base import Instance, RegistryRejected, RegistryUnavailable, RegistryURLError
from registry_adapters.keepalive import Beats, Published, Publisher
from registry_adapters.reasons import reason, told
from registry_adapters.urls import query_options

log = logging.getLogger(__name__)

# The weight in the service's Meta too, where Spring Cloud Consul's ServiceInstance metadata
# comes from, and Spring Cloud LoadBalancer's weighted supplier reads it.
META_WEIGHT_KEY = "weight"

DEFAULT_PORT = 8500
# Two lost passes at the default beat are tolerated before consumers stop seeing the instance.
DEFAULT_TTL_S = 10.0
DEFAULT_BEAT_S = 3.0
# How long a critical instance stays in the catalog; Consul raises anything lower to 1m.
DEREGISTER_CRITICAL_AFTER = "1m"
# A blocking query returns after this even without change (Consul adds up to wait/16 jitter).
DEFAULT_WATCH_WAIT_S = 25.0
# Any other call is answered by the local agent in milliseconds; beyond this it is unwell.
DEFAULT_CALL_TIMEOUT_S = 5.0
# How Consul says a TTL check is unknown: 1.8.x answers 500 with the first text, newer agents 404.
_CHECK_GONE_MARKERS = ("does not have associated TTL", "Unknown check")
_REJECTED = (ACLDisabled, ACLPermissionDenied, BadRequest, ClientError)


class ConsulRegistry(Publisher[Published]):
    kind = "consul"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        token: str | None = None,
        ttl: float = DEFAULT_TTL_S,
        beat_interval: float = DEFAULT_BEAT_S,
        watch_wait: float = DEFAULT_WATCH_WAIT_S,
        call_timeout: float = DEFAULT_CALL_TIMEOUT_S,
    ) -> None:
        super().__init__()
        self._host = f"[{host}]" if ":" in host else host  # py-consul pastes it into a URL
        self._port = port
        self.where = f"consul at {self._host}:{port}"  # never the token
        self._token = token
        self._ttl = f"{ttl:g}s"
        self._watch_wait = watch_wait
        self._call_timeout = call_timeout
        self._blocking_timeout = watch_wait * 17 / 16 + call_timeout
        self._client: Any = None  # created on first use: aiohttp wants a running loop
        self._beats = Beats("consul heartbeat", beat_interval, self._beat, log)

    @classmethod
    def from_url(cls, parts: SplitResult, **options: Any) -> Self:
        shown = f"{parts.scheme}://{parts.netloc}"  # never echo the token
        try:
            port = parts.port
        except ValueError as exc:
            raise RegistryURLError(f"bad port in registry URL {shown!r}: {exc}") from exc
        if port == 0 or not parts.hostname or parts.path not in ("", "/"):
            raise RegistryURLError(f"registry URL {shown!r}: expected consul://HOST[:PORT][?token=TOKEN]")
        token = query_options(parts, shown, ["token"]).get("token")
        return cls(parts.hostname, port or DEFAULT_PORT, token=token or None, **options)

    async def register(self, instance: Instance) -> None:
        self._check_open()
        published = Published(instance)
        async with self._lock:
            await self._publish(published)
            self._published[instance.instance_id] = published
            self._beats.start(instance.instance_id)

    async def watch(self, service: str) -> AsyncGenerator[list[Instance], None]:
        self._check_open()
        index: int | None = None
        last: list[Instance] | None = None
        while True:
            health = self._api().health
            request = health.service(service, index=index, wait=f"{self._watch_wait:g}s", passing=True)
            limit_s = self._call_timeout if index is None else self._blocking_timeout
            header, entries = await self._call("watch", request, limit_s)
            index = _next_index(self.where, index, header)
            current = _instances(self.where, entries)
            if current != last:
                last = current
                yield current

    async def services(self) -> list[str]:
        _, names = await self._call("services", self._api().catalog.services())
        if not isinstance(names, dict):
            raise RegistryUnavailable(
                told(self.where, "the catalog answered no list of services", "services")
            )
        return sorted(str(name) for name in names)

    async def close(self) -> None:
        self._closed = True
        await self._beats.stop()
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    # -- internals ------------------------------------------------------------------------------

    def _api(self) -> Any:
        self._check_open()  # and so never a new client after close()
        if self._client is None:
            # py-consul builds its connector with SSL arguments aiohttp deprecates; harmless
            # for plain HTTP, but fatal wherever warnings are errors.
            with warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore", "(ssl_context|verify_ssl) is deprecated", DeprecationWarning
                )
                self._client = consul.aio.Consul(
                    host=self._host,
                    port=self._port,
                    scheme="http",
                    verify=True,
                    # The session's total timeout also bounds blocking queries: keep it above.
                    connections_timeout=self._blocking_timeout + 1,
                )
            if self._token:
                self._client.token = self._token  # py-consul lets CONSUL_HTTP_TOKEN win otherwise
        return self._client

    async def _call(self, what: str, request: Awaitable[Any], limit_s: float | None = None) -> Any:
        """Await a py-consul request, translating its failures into the registry errors."""
        limit_s = limit_s or self._call_timeout
        try:
            async with asyncio.timeout(limit_s):
                return await request
        except _REJECTED as exc:
            raise RegistryRejected(told(self.where, reason(exc), what)) from exc
        except (ConsulException, TimeoutError, aiohttp.ClientError, OSError) as exc:
            # 5xx and py-consul's Timeout too; aiohttp's errors carry the OSError that says why.
            raise RegistryUnavailable(told(self.where, reason(exc, limit_s), what)) from exc

    async def _show(self, published: Published, *, weight_changed: bool) -> None:
        # Maintenance alone takes it out; a weight > 0 is registered (maintenance kept if offline).
        if weight_changed and published.instance.weight > 0:
            await self._publish(published)
        else:
            await self._set_maintenance(published)
        published.synced = True

    async def _withdraw(self, instance_id: str, published: Published | None) -> None:
        self._published.pop(instance_id, None)
        await self._beats.stop([instance_id])
        # Sent for an id not registered here too (an earlier process's, say). An unknown
        # service is no error: 1.8.x answers 200, newer agents 404 (False here).
        await self._call("deregister", self._api().agent.service.deregister(instance_id))

    async def _publish(self, published: Published) -> None:
        """Register the instance as `published` wants it (registering again replaces)."""
        instance = published.instance
        check = {
            "CheckID": _check_id(instance.instance_id),
            "Name": "graceful-sidecar heartbeat",
            "TTL": self._ttl,
            # Critical until maintenance is on, so an instance kept out is never shown in between.
            "Status": "passing" if published.in_rotation else "critical",
            "DeregisterCriticalServiceAfter": DEREGISTER_CRITICAL_AFTER,
        }
        request = self._api().agent.service.register(
            instance.service,
            service_id=instance.instance_id,
            address=instance.host,
            port=instance.port,
            meta={**instance.meta, META_WEIGHT_KEY: str(instance.weight)},
            weights={"Passing": max(instance.weight, 1), "Warning": 1},
            check=check,
        )
        await self._call("register", request)
        await self._set_maintenance(published)

    async def _set_maintenance(self, published: Published) -> None:
        # Always sent, also to turn it off: a previous process with this id may have left it on.
        enable = not published.in_rotation
        reason = ("offline" if published.offline else "weight 0") if enable else None
        request = self._api().agent.service.maintenance(published.instance.instance_id, enable, reason)
        # False (404) means the agent lost the service; the beat registers it again, maintenance too.
        await self._call("maintenance", request)

    async def _beat(self, instance_id: str) -> bool:
        """Keep the TTL check passing; publish again what the agent forgot or missed."""
        known = await self._check_known(instance_id)
        async with self._lock:
            if (published := self._published.get(instance_id)) is None:
                return False
            if known and published.synced:
                return True
            if not known:
                log.warning("consul forgot %s (agent restarted?); registering it again", instance_id)
            await self._publish(published)
            published.synced = True
            return True

    async def _check_known(self, instance_id: str) -> bool:
        """Pass the TTL check; False when the agent does not know it (any more)."""
        try:
            request = self._api().agent.check.ttl_pass(_check_id(instance_id))
            return bool(await self._call("heartbeat", request))  # False: 404, newer agents
        except RegistryUnavailable as exc:
            if any(marker in str(exc.__cause__) for marker in _CHECK_GONE_MARKERS):
                return False
            raise


def _check_id(instance_id: str) -> str:
    return f"sidecar-ttl:{instance_id}"


def _next_index(where: str, previous: int | None, header: object) -> int | None:
    """The index for the next blocking query, following Consul's rules for odd values."""
    try:
        index = int(str(header))
    except ValueError as exc:
        raise RegistryUnavailable(told(where, f"bad X-Consul-Index {header!r}", "watch")) from exc
    if previous is not None and index < previous:
        return None  # the index went backwards (agent restarted, snapshot restored): read afresh
    return max(index, 1)  # 0 would make the next query return at once, forever


def _instances(where: str, entries: object) -> list[Instance]:
    if not isinstance(entries, list):
        why = f"expected a list of entries, got {type(entries).__name__}"
        raise RegistryUnavailable(told(where, why, "watch"))
    found = (_instance(entry) for entry in entries)
    return sorted((i for i in found if i is not None), key=lambda i: i.instance_id)


def _instance(entry: object) -> Instance | None:
    """An Instance from one `/v1/health/service` entry, or None (logged) when it is malformed."""
    service = entry.get("Service") if isinstance(entry, dict) else None
    node = entry.get("Node") if isinstance(entry, dict) else None
    if isinstance(service, dict):
        instance_id, name = service.get("ID"), service.get("Service")
        host = service.get("Address") or (node.get("Address") if isinstance(node, dict) else None)
        weights = service.get("Weights") or {"Passing": 1}
        weight = _int_in(weights.get("Passing") if isinstance(weights, dict) else None, 1, 1 << 31)
        port = _int_in(service.get("Port"), 1, 65535)
        meta = service.get("Meta") or {}
        if isinstance(meta, dict):  # its weight is Weights.Passing's
            meta = {key: value for key, value in meta.items() if key != META_WEIGHT_KEY}
        texts = [instance_id, name, host, *meta.keys(), *meta.values()] if isinstance(meta, dict) else [None]
        if port and weight and all(isinstance(text, str) for text in texts) and instance_id and name and host:
            return Instance(name, instance_id, host, port, weight, meta)
    log.warning("skipping a malformed consul health entry: %.300r", entry)
    return None


def _int_in(value: object, low: int, high: int) -> int | None:
    return value if type(value) is int and low <= value <= high else None
