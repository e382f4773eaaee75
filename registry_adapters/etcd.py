"""etcd v3 backend, through etcd's own JSON gateway over httpx, in go-kratos's key layout.

Features
--------
- Client: the gRPC gateway every etcd server has (`/v3/kv/put|range|deleterange`,
  `/v3/lease/grant|keepalive|revoke`, `/v3/watch` as a stream of JSON lines; keys and values in
  base64, int64 as strings): documented, stable since 3.4, and only httpx, which the sidecar
  already uses. Not the `etcd3` package: unmaintained, its generated code breaks with current
  protobuf; nor grpcio and generated stubs of our own: a large dependency for seven calls.
- Layout of go-kratos's etcd registry (`contrib/registry/etcd/registry.go`): one key
  `PREFIX/SERVICE/INSTANCE_ID` per instance, its value the JSON of kratos's `ServiceInstance`
  `{"id", "name", "version", "metadata", "endpoints": ["http://host:port"]}`. The weight is
  `metadata["weight"]`, which kratos's selector reads; the sidecar's metadata sits beside it.
- `register` grants a lease (the TTL) and puts the key with it; a task renews the lease every
  TTL/3, so the key of a sidecar killed with SIGKILL goes when its lease expires. A renewal
  that finds the lease gone (etcd rebuilt without its data, a stall past the TTL) grants a new
  one and puts the key again; so it does for a key deleted behind its back, and for a change
  that failed while etcd was away. The task logs its failures and never ends on them.
- Weight 0 and `set_offline` delete the key at once (readers drop it), keeping the lease; a
  weight > 0 puts it back, never after `set_offline`. `deregister` revokes the lease.
- `watch` reads `PREFIX/SERVICE/` once, then follows the watch stream from the next revision:
  no gap, no duplicate. A broken or idle stream resumes from the last revision seen (on another
  endpoint if need be); a compacted one reads afresh; `RegistryUnavailable` when no endpoint
  answers. Values that are no kratos instance of the service with an `http://` endpoint are
  logged and skipped.
- Several endpoints: each call goes first to the one that answered last, then to the others.
- `set_weight` and `set_offline` act on instances registered through this object (`set_weight`
  of another one is rejected; `set_offline` and `deregister` of another one do nothing).
- `close()` stops the renewals and leaves the leases to expire; it does not deregister.

Connection string
-----------------
`etcd://HOST[:PORT][,HOST[:PORT]...][?prefix=/microservices&ttl=SECONDS]`: PORT defaults to
2379, IPv6 hosts in brackets; `prefix` is kratos's namespace (default `/microservices`); `ttl`
is the lease TTL in whole seconds (default 10; etcd raises it to its minimum, 2 s at default
timings). Plain HTTP, no authentication.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import SplitResult, parse_qs, urlsplit

import httpx

from registry_adapters import kratos_layout
from registry_adapters.base import (
    Backend,
    Instance,
    RegistryError,
    RegistryRejected,
    RegistryUnavailable,
    RegistryURLError,
)

log = logging.getLogger(__name__)

DEFAULT_PORT = 2379
DEFAULT_PREFIX = kratos_layout.DEFAULT_NAMESPACE
# Two lost renewals at TTL/3 are tolerated before consumers stop seeing the instance.
DEFAULT_TTL_S = 10.0
# A member answers in milliseconds; beyond this it is unwell (or has no leader).
DEFAULT_CALL_TIMEOUT_S = 5.0
# A watch stream silent this long is resumed from its revision: cheap, and it finds a member
# that went away without closing the connection (etcd 3.4 sends progress only every 10 min).
DEFAULT_WATCH_IDLE_S = 60.0


class _LeaseGone(RegistryRejected):
    """etcd does not know the lease (expired, revoked, or lost with the data dir)."""


class _StreamBroken(Exception):
    """The watch stream ended or failed after it was set up; resume it."""


class _Compacted(Exception):
    """The revision to resume from was compacted away: read afresh."""


@dataclass(slots=True)
class _Published:
    """What this process wants etcd to show for one instance."""

    instance: Instance
    key: str
    lease: int | None = None
    offline: bool = False
    synced: bool = True  # False after a change etcd may have missed: the renewal task puts again

    @property
    def in_rotation(self) -> bool:
        return not self.offline and self.instance.weight > 0


class EtcdRegistry(Backend):
    kind = "etcd"

    def __init__(
        self,
        endpoints: list[str] | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        ttl: float = DEFAULT_TTL_S,
        beat_interval: float | None = None,
        call_timeout: float = DEFAULT_CALL_TIMEOUT_S,
        watch_idle: float = DEFAULT_WATCH_IDLE_S,
    ) -> None:
        self._endpoints = endpoints or [f"http://127.0.0.1:{DEFAULT_PORT}"]
        self._current = 0  # the endpoint that answered last
        self._prefix = prefix.rstrip("/")
        self._ttl = max(1, math.ceil(ttl))
        self._beat_interval = beat_interval if beat_interval is not None else self._ttl / 3
        self._call_timeout = call_timeout
        self._watch_idle = watch_idle
        self._client: httpx.AsyncClient | None = None
        self._closed = False
        self._published: dict[str, _Published] = {}
        self._beats: dict[str, asyncio.Task[None]] = {}
        # Serialises changes, so that a renewal's put can never follow a deletion or revocation.
        self._lock = asyncio.Lock()

    @classmethod
    def from_url(cls, parts: SplitResult, **options: Any) -> Self:
        shown = f"{parts.scheme}://{parts.netloc}{parts.path}"
        usage = "expected etcd://HOST[:PORT][,HOST[:PORT]...][?prefix=/PATH&ttl=SECONDS]"
        if parts.path not in ("", "/") or parts.fragment or "@" in parts.netloc:
            raise RegistryURLError(f"registry URL {shown!r}: {usage}")
        endpoints = []
        for item in parts.netloc.split(","):
            try:
                host_port = urlsplit(f"//{item}")
                host, port = host_port.hostname, host_port.port
            except ValueError as exc:
                raise RegistryURLError(f"bad host or port {item!r} in registry URL {shown!r}: {exc}") from exc
            if not host or port == 0:
                raise RegistryURLError(f"bad host or port {item!r} in registry URL {shown!r}: {usage}")
            host = f"[{host}]" if ":" in host else host
            endpoints.append(f"http://{host}:{port or DEFAULT_PORT}")
        query = parse_qs(parts.query, keep_blank_values=True)
        if unknown := sorted(set(query) - {"prefix", "ttl"}):
            raise RegistryURLError(
                f"registry URL {shown!r}: unknown parameter(s) {unknown}, only prefix=, ttl="
            )
        if "prefix" in query:
            prefix = query["prefix"][-1]
            if not prefix.startswith("/") or not prefix.strip("/") or "//" in prefix:
                raise RegistryURLError(
                    f"registry URL {shown!r}: prefix must be a path such as /microservices"
                )
            options.setdefault("prefix", prefix)
        if "ttl" in query:
            ttl = query["ttl"][-1]
            if not ttl.isdigit() or not 1 <= int(ttl) <= 3600:
                raise RegistryURLError(f"registry URL {shown!r}: ttl must be whole seconds, 1..3600")
            options.setdefault("ttl", float(ttl))
        return cls(endpoints, **options)

    def key_of(self, instance: Instance) -> str:
        return kratos_layout.key(self._prefix, instance.service, instance.instance_id)

    async def register(self, instance: Instance) -> None:
        async with self._lock:
            old = self._published.get(instance.instance_id)
            published = _Published(instance, self.key_of(instance), old.lease if old else None)
            if old is not None and old.key != published.key and old.in_rotation:
                await self._call("/v3/kv/deleterange", {"key": _b64(old.key)})
            if published.lease is None:
                published.lease = await self._grant()
            try:
                await self._publish(published)
            except _LeaseGone:
                published.lease = await self._grant()
                await self._publish(published)
            self._published[instance.instance_id] = published
            if instance.instance_id not in self._beats:
                self._beats[instance.instance_id] = asyncio.create_task(
                    self._beat(instance.instance_id), name=f"etcd-lease-{instance.instance_id}"
                )

    async def set_weight(self, instance_id: str, weight: int) -> None:
        async with self._lock:
            published = self._published.get(instance_id)
            if published is None:
                raise RegistryRejected(f"{instance_id!r} was not registered through this registry")
            published.instance, published.synced = published.instance.with_weight(weight), False
            await self._publish(published)

    async def set_offline(self, instance_id: str) -> None:
        async with self._lock:
            published = self._published.get(instance_id)
            if published is not None:
                published.offline, published.synced = True, False
                await self._publish(published)

    async def deregister(self, instance_id: str) -> None:
        async with self._lock:
            published = self._published.get(instance_id)
            if published is None:
                return
            await self._stop_beats([instance_id])
            # Kept until etcd confirms, so that a retry revokes again (the lease expires anyway).
            if published.lease is not None:
                try:
                    await self._call("/v3/lease/revoke", {"ID": str(published.lease)})
                except _LeaseGone:
                    await self._call("/v3/kv/deleterange", {"key": _b64(published.key)})
            else:
                await self._call("/v3/kv/deleterange", {"key": _b64(published.key)})
            del self._published[instance_id]

    async def watch(self, service: str) -> AsyncGenerator[list[Instance], None]:
        prefix = f"{self._prefix}/{service}/"
        entries: dict[str, Instance | None] = {}
        revision: int | None = None  # everything up to it is in `entries`
        last: list[Instance] | None = None
        broken_in_a_row = 0
        while True:
            if revision is None:
                answer = await self._call(
                    "/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(_end(prefix))}
                )
                revision = int(answer.get("header", {}).get("revision", 0))
                entries = {_unb64(kv["key"]): _instance(kv, service) for kv in answer.get("kvs", [])}
                if (current := _listed(entries)) != last:
                    last = current
                    yield current
            try:
                async with aclosing(self._stream(prefix, revision)) as stream:
                    async for changes, reached in stream:
                        revision, broken_in_a_row = reached, 0
                        entries.update(changes)
                        if (current := _listed(entries)) != last:
                            last = current
                            yield current
            except _StreamBroken as exc:
                broken_in_a_row += 1
                if broken_in_a_row > 1:  # resuming did not help: let the caller back off
                    raise RegistryUnavailable(f"etcd watch: {exc}") from exc
                log.info("etcd watch of %s resumes from revision %s: %s", service, revision, exc)
            except _Compacted:
                revision = None

    async def close(self) -> None:
        self._closed = True
        await self._stop_beats(list(self._beats))
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- internals ------------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._closed:
            raise RuntimeError("EtcdRegistry is closed")
        if self._client is None:
            # trust_env off: a proxy from the environment must not sit between us and etcd.
            self._client = httpx.AsyncClient(timeout=self._call_timeout, trust_env=False)
        return self._client

    def _order(self) -> list[int]:
        return [(self._current + i) % len(self._endpoints) for i in range(len(self._endpoints))]

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the gateway, trying each endpoint; the answer's JSON, or a registry error."""
        what = path.removeprefix("/v3/")
        failures = []
        for i in self._order():
            try:
                response = await self._http().post(self._endpoints[i] + path, json=body)
                answer = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                failures.append(f"{self._endpoints[i]}: {exc!r}")
                continue
            if response.status_code >= 500:
                failures.append(f"{self._endpoints[i]}: {response.status_code} {_message(answer)}")
                continue
            self._current = i
            if response.status_code != 200 or not isinstance(answer, dict):
                message = f"etcd {what}: {response.status_code} {_message(answer)}"
                raise (_LeaseGone if "lease not found" in message else RegistryRejected)(message)
            return answer
        raise RegistryUnavailable(f"etcd {what}: no endpoint answered ({'; '.join(failures)})")

    async def _grant(self) -> int:
        answer = await self._call("/v3/lease/grant", {"TTL": str(self._ttl)})
        if answer.get("error") or not answer.get("ID"):
            raise RegistryRejected(f"etcd lease/grant: {_message(answer)}")
        return int(answer["ID"])

    async def _keepalive(self, lease: int) -> bool:
        """Renew `lease` once; False when etcd no longer knows it."""
        answer = await self._call("/v3/lease/keepalive", {"ID": str(lease)})
        return int(answer.get("result", {}).get("TTL", 0)) > 0  # no TTL: an unknown lease

    async def _publish(self, published: _Published) -> None:
        """Put the key (with its lease) while in rotation, delete it otherwise."""
        if published.in_rotation:
            value = kratos_layout.value(published.instance)
            body = {"key": _b64(published.key), "value": _b64(value), "lease": str(published.lease)}
            await self._call("/v3/kv/put", body)
        else:
            await self._call("/v3/kv/deleterange", {"key": _b64(published.key)})
        published.synced = True

    async def _beat(self, instance_id: str) -> None:
        """Renew the lease; grant a new one when it was lost; put again what etcd lost or missed."""
        while True:
            await asyncio.sleep(self._beat_interval)
            try:
                if (seen := self._published.get(instance_id)) is None:
                    return
                lease, key = seen.lease, seen.key
                alive = lease is not None and await self._keepalive(lease)
                # A key deleted behind our back (by hand, say) while its lease lives: put it again.
                missing = alive and seen.in_rotation and not await self._exists(key)
                async with self._lock:
                    if (published := self._published.get(instance_id)) is None:
                        return
                    if (published.lease, published.key) != (lease, key):
                        continue  # registered again meanwhile: the next beat checks that one
                    if not alive:
                        log.warning("etcd lost the lease of %s; granting a new one", instance_id)
                        published.lease, published.synced = await self._grant(), False
                    elif missing and published.in_rotation:
                        log.warning("etcd lost the key of %s; putting it again", instance_id)
                        published.synced = False
                    if not published.synced:
                        await self._publish(published)
            except RegistryError as exc:
                log.warning("etcd lease renewal of %s failed: %s", instance_id, exc)
            except Exception:  # the renewal must outlive any surprise, or the instance expires
                log.exception("etcd lease renewal of %s failed", instance_id)

    async def _exists(self, key: str) -> bool:
        answer = await self._call("/v3/kv/range", {"key": _b64(key), "count_only": True})
        return int(answer.get("count", 0)) > 0

    async def _stop_beats(self, instance_ids: list[str]) -> None:
        tasks = [task for i in instance_ids if (task := self._beats.pop(i, None)) is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _stream(
        self, prefix: str, revision: int
    ) -> AsyncGenerator[tuple[dict[str, Instance | None], int], None]:
        """The changes under `prefix` after `revision`, each with the revision it brings us to."""
        service = prefix[len(self._prefix) + 1 : -1]
        create = {"key": _b64(prefix), "range_end": _b64(_end(prefix)), "start_revision": str(revision + 1)}
        timeout = httpx.Timeout(self._call_timeout, read=self._watch_idle)
        failures = []
        for i in self._order():
            url = self._endpoints[i] + "/v3/watch"
            try:
                async with self._http().stream(
                    "POST", url, json={"create_request": create}, timeout=timeout
                ) as r:
                    if r.status_code != 200:
                        failures.append(f"{self._endpoints[i]}: status {r.status_code}")
                        continue
                    self._current = i
                    async for line in r.aiter_lines():
                        if line.strip():
                            changes, revision = _watch_response(line, service, revision)
                            if changes:
                                yield changes, revision
            except httpx.ReadTimeout:
                return  # idle: the caller resumes from `revision`
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failures.append(f"{self._endpoints[i]}: {exc!r}")
                continue
            except httpx.HTTPError as exc:
                raise _StreamBroken(repr(exc)) from exc
            raise _StreamBroken("the stream ended")
        raise RegistryUnavailable(f"etcd watch: no endpoint answered ({'; '.join(failures)})")


def _watch_response(line: str, service: str, revision: int) -> tuple[dict[str, Instance | None], int]:
    """The changes one line of the watch stream brings, and the revision they bring us to."""
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise _StreamBroken(f"not JSON: {line[:200]!r}") from exc
    result = message.get("result") if isinstance(message, dict) else None
    if not isinstance(result, dict):
        raise _StreamBroken(f"etcd watch error: {line[:300]}")
    if result.get("compact_revision") not in (None, "0"):
        raise _Compacted()
    if result.get("canceled"):
        raise _StreamBroken(f"etcd canceled the watch: {result.get('cancel_reason', '')}")
    changes: dict[str, Instance | None] = {}
    for event in result.get("events") or []:
        kv = event.get("kv", {})
        # PUT is the enum's zero value, which the gateway leaves out.
        changes[_unb64(kv["key"])] = None if event.get("type") == "DELETE" else _instance(kv, service)
        revision = max(revision, int(kv.get("mod_revision", revision)))
    return changes, revision


def _instance(kv: dict[str, Any], service: str) -> Instance | None:
    return kratos_layout.instance(_unb64(kv.get("value", "")), service)


def _listed(entries: dict[str, Instance | None]) -> list[Instance]:
    """The instances that should get traffic, sorted by id (kratos would send to weight 0 too)."""
    return sorted(
        (i for i in entries.values() if i is not None and i.weight > 0), key=lambda i: i.instance_id
    )


def _end(prefix: str) -> str:
    """The range end that covers every key starting with `prefix` (ends in '/', so +1 is safe)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode(errors="replace")


def _message(answer: object) -> str:
    return str(answer.get("message") or answer) if isinstance(answer, dict) else repr(answer)[:300]
