"""etcd v3 backend, through etcd's own JSON gateway over httpx, in go-kratos's key layout.

Features
--------
- Client: the gRPC gateway every etcd server has (`etcd_gateway`; `/v3/kv/put|range|deleterange`,
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
  answers, when resuming did not help, and when the stream's member failed (`MemberFailed`: it
  stopped answering, or lost its leader; see `etcd_gateway`), so that the caller counts the
  failure and watches again, from the next member. Values that are no kratos instance of the
  service with an `http://` endpoint are logged and skipped.
- Several endpoints: each call goes first to the one that answered last, then to the others.
- `set_weight` and `set_offline` act on instances registered through this object (`set_weight`
  of another one is rejected; `set_offline` and `deregister` of another one do nothing).
- `services` lists the services with a key under the prefix (its first segment: kratos's
  name), read keys only; out of rotation is no key, so such a service is not listed.
- `close()` stops the renewals and leaves the leases to expire; it does not deregister.

Connection string
-----------------
`etcd://HOST[:PORT][,HOST[:PORT]...][?prefix=/microservices&ttl=SECONDS]`: PORT defaults to
2379, IPv6 hosts in brackets; `prefix` is kratos's namespace (default `/microservices`); `ttl`
is the lease TTL in whole seconds (default 10; etcd raises it to its minimum, 2 s at default
timings). Plain HTTP, no authentication.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import SplitResult

from registry_adapters import kratos_layout
from registry_adapters.base import Instance, RegistryUnavailable, RegistryURLError
from registry_adapters.etcd_gateway import Compacted, EtcdGateway, LeaseGone, StreamBroken
from registry_adapters.keepalive import Beats, Published, Publisher
from registry_adapters.reasons import told
from registry_adapters.urls import BadHost, host_list, query_options

log = logging.getLogger(__name__)

DEFAULT_PORT = 2379
DEFAULT_PREFIX = kratos_layout.DEFAULT_NAMESPACE
# Two lost renewals at TTL/3 are tolerated before consumers stop seeing the instance.
DEFAULT_TTL_S = 10.0
# A member answers in milliseconds; beyond this it is unwell (or has no leader). Also the bound on
# a watch's start (response head and etcd's `created`) and on a quiet watch's status probe.
DEFAULT_CALL_TIMEOUT_S = 5.0
# A watch stream quiet this long has its member asked for its status (clientv3's keepalive ping,
# by hand: etcd 3.4's own progress notices come every 10 min). With the call timeout, a member
# that freezes is left within 5 + 5 s, inside the 15 s a consumer may take to see a change; the
# price is one small request, answered by the member alone, per 5 s of quiet per watch.
DEFAULT_WATCH_PROBE_S = 5.0
# A watch stream quiet this long is resumed from its revision, on the same member: cheap, and it
# finds a stream whose connection died silently while the member still answers the probes.
DEFAULT_WATCH_IDLE_S = 60.0


@dataclass(slots=True, kw_only=True)
class _Published(Published):
    """What this process wants etcd to show for one instance: also its key and lease."""

    key: str
    lease: int | None = None


class EtcdRegistry(Publisher[_Published]):
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
        watch_probe: float = DEFAULT_WATCH_PROBE_S,
    ) -> None:
        # The lock serialises changes, so a renewal's put never follows a deletion or revocation.
        super().__init__()
        endpoints = endpoints or [f"http://127.0.0.1:{DEFAULT_PORT}"]
        self._etcd = EtcdGateway(
            endpoints, call_timeout=call_timeout, watch_idle=watch_idle, probe_after=watch_probe
        )
        self.where = self._etcd.where
        self._prefix = prefix.rstrip("/")
        self._ttl = max(1, math.ceil(ttl))
        beat_interval = beat_interval if beat_interval is not None else self._ttl / 3
        self._beats = Beats("etcd lease renewal", beat_interval, self._beat, log)

    @classmethod
    def from_url(cls, parts: SplitResult, **options: Any) -> Self:
        shown = f"{parts.scheme}://{parts.netloc}{parts.path}"
        usage = "expected etcd://HOST[:PORT][,HOST[:PORT]...][?prefix=/PATH&ttl=SECONDS]"
        if parts.path not in ("", "/") or parts.fragment or "@" in parts.netloc:
            raise RegistryURLError(f"registry URL {shown!r}: {usage}")
        try:
            endpoints = [f"http://{host}" for host in host_list(parts.netloc, DEFAULT_PORT)]
        except BadHost as exc:
            raise RegistryURLError(
                f"bad host or port {exc.entry!r} in registry URL {shown!r}: {usage}"
            ) from None
        query = query_options(parts, shown, ["prefix", "ttl"])
        if (prefix := query.get("prefix")) is not None:
            if not prefix.startswith("/") or not prefix.strip("/") or "//" in prefix:
                raise RegistryURLError(
                    f"registry URL {shown!r}: prefix must be a path such as /microservices"
                )
            options.setdefault("prefix", prefix)
        if (ttl := query.get("ttl")) is not None:
            if not ttl.isdigit() or not 1 <= int(ttl) <= 3600:
                raise RegistryURLError(f"registry URL {shown!r}: ttl must be whole seconds, 1..3600")
            options.setdefault("ttl", float(ttl))
        return cls(endpoints, **options)

    def key_of(self, instance: Instance) -> str:
        return kratos_layout.key(self._prefix, instance.service, instance.instance_id)

    async def register(self, instance: Instance) -> None:
        self._check_open()
        async with self._lock:
            old = self._published.get(instance.instance_id)
            published = _Published(instance, key=self.key_of(instance), lease=old.lease if old else None)
            if old is not None and old.key != published.key and old.in_rotation:
                await self._etcd.delete(old.key)
            if published.lease is None:
                published.lease = await self._etcd.grant(self._ttl)
            try:
                await self._publish(published)
            except LeaseGone:
                published.lease = await self._etcd.grant(self._ttl)
                await self._publish(published)
            self._published[instance.instance_id] = published
            self._beats.start(instance.instance_id)

    async def watch(self, service: str) -> AsyncGenerator[list[Instance], None]:
        self._check_open()
        prefix = f"{self._prefix}/{service}/"
        entries: dict[str, Instance | None] = {}
        revision: int | None = None  # everything up to it is in `entries`
        last: list[Instance] | None = None
        broken_in_a_row = 0
        while True:
            if revision is None:
                values, revision = await self._etcd.read(prefix)
                entries = {key: kratos_layout.instance(value, service) for key, value in values.items()}
                if (current := _listed(entries)) != last:
                    last = current
                    yield current
            try:
                async with aclosing(self._etcd.stream(prefix, revision)) as stream:
                    async for changes, reached in stream:
                        revision, broken_in_a_row = reached, 0
                        entries.update(
                            (key, None if value is None else kratos_layout.instance(value, service))
                            for key, value in changes.items()
                        )
                        if (current := _listed(entries)) != last:
                            last = current
                            yield current
            except StreamBroken as exc:
                broken_in_a_row += 1
                if broken_in_a_row > 1:  # resuming did not help: let the caller back off
                    raise RegistryUnavailable(told(self.where, str(exc), "watch")) from exc
                log.info("etcd watch of %s resumes from revision %s: %s", service, revision, exc)
            except Compacted:
                revision = None

    async def services(self) -> list[str]:
        self._check_open()
        names = (
            key[len(self._prefix) + 1 :].partition("/") for key in await self._etcd.keys(f"{self._prefix}/")
        )
        return sorted({service for service, slash, _ in names if service and slash})  # PREFIX/SERVICE/ID

    async def close(self) -> None:
        self._closed = True
        await self._beats.stop()
        await self._etcd.aclose()

    # -- internals ------------------------------------------------------------------------------

    async def _show(self, published: _Published, *, weight_changed: bool) -> None:
        await self._publish(published)

    async def _publish(self, published: _Published) -> None:
        """Put the key (with its lease) while in rotation, delete it otherwise."""
        if published.in_rotation:
            await self._etcd.put(published.key, kratos_layout.value(published.instance), published.lease)
        else:
            await self._etcd.delete(published.key)
        published.synced = True

    async def _withdraw(self, instance_id: str, published: _Published | None) -> None:
        if published is None:
            return
        await self._beats.stop([instance_id])
        # Kept until etcd confirms, so that a retry revokes again (the lease expires anyway).
        if published.lease is not None:
            try:
                await self._etcd.revoke(published.lease)
            except LeaseGone:
                await self._etcd.delete(published.key)
        else:
            await self._etcd.delete(published.key)
        del self._published[instance_id]

    async def _beat(self, instance_id: str) -> bool:
        """Renew the lease; grant a new one when it was lost; put again what etcd lost or missed."""
        if (seen := self._published.get(instance_id)) is None:
            return False
        lease, key = seen.lease, seen.key
        alive = lease is not None and await self._etcd.keepalive(lease)
        # A key deleted behind our back (by hand, say) while its lease lives: put it again.
        missing = alive and seen.in_rotation and not await self._etcd.exists(key)
        async with self._lock:
            if (published := self._published.get(instance_id)) is None:
                return False
            if (published.lease, published.key) != (lease, key):
                return True  # registered again meanwhile: the next beat checks that one
            if not alive:
                log.warning("etcd lost the lease of %s; granting a new one", instance_id)
                published.lease, published.synced = await self._etcd.grant(self._ttl), False
            elif missing and published.in_rotation:
                log.warning("etcd lost the key of %s; putting it again", instance_id)
                published.synced = False
            if not published.synced:
                await self._publish(published)
            return True


def _listed(entries: dict[str, Instance | None]) -> list[Instance]:
    """The instances that should get traffic, sorted by id (kratos would send to weight 0 too)."""
    return sorted(
        (i for i in entries.values() if i is not None and i.weight > 0), key=lambda i: i.instance_id
    )
