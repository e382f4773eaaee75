"""A client of etcd v3's JSON gateway (the gRPC gateway every etcd server has), over httpx.

The calls the etcd backend makes, and nothing of what it makes of them: `/v3/kv/put|range|
deleterange`, `/v3/lease/grant|keepalive|revoke` and `/v3/watch`, a stream of JSON lines. Keys
and values travel in base64 and int64 as strings. Each call goes first to the endpoint that
answered last, then to the others; it answers the JSON, or raises `RegistryUnavailable` when no
endpoint answered and `RegistryRejected` when one refused (`LeaseGone` for an unknown lease).

A hung member (a frozen process, a paused VM) accepts connections and never answers: to a watch
stream that looks like quiet. etcd's own client (clientv3) finds such a member with gRPC keepalive
pings on the watch's connection and a timeout, and opens its watches `WithRequireLeader`, so that
a member cut off from its leader cancels them. The gateway speaks HTTP/1.1, where there are no
pings, so the watch stream does the equivalent by hand:
- its start must bring the response head and etcd's first answer (`created`) within the call
  timeout, or the next endpoint is tried;
- while it is quiet, its member is asked for its status (`/v3/maintenance/status`, answered by
  the member itself, without raft or disk) every `probe_after` seconds; no answer within the call
  timeout and the stream fails with `MemberFailed`, and the next call starts on the next member;
- it carries the gRPC metadata `hasleader: true` (`Grpc-Metadata-Hasleader`, which the gateway
  passes on as metadata, as clientv3's `WithRequireLeader` does): etcd refuses to start it on a
  member without a leader, and cancels it once the member has had none for three election
  timeouts (`v3rpc/interceptor.go`, `monitorLeader`); both are `MemberFailed` too.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack, aclosing
from typing import Any

import httpx

from registry_adapters.base import RegistryClosed, RegistryRejected, RegistryUnavailable
from registry_adapters.reasons import reason, told

log = logging.getLogger(__name__)

# The gRPC status etcd ends a watch with when its member has no leader (`ErrGRPCNoLeader`), or
# is stopping: the member is unwell, not the request.
GRPC_UNAVAILABLE = "14"

# gRPC metadata through the gateway (grpc-gateway's `Grpc-Metadata-` prefix): rpctypes'
# MetadataRequireLeaderKey = MetadataHasLeader, what clientv3's WithRequireLeader sends.
REQUIRE_LEADER = {"Grpc-Metadata-Hasleader": "true"}


class LeaseGone(RegistryRejected):
    """etcd does not know the lease (expired, revoked, or lost with the data dir)."""


class MemberFailed(RegistryUnavailable):
    """The member of a watch stream stopped answering, or has no leader: the stream is given up,
    and the next call goes to the next member."""


class StreamBroken(Exception):
    """The watch stream ended or failed after it was set up; resume it."""


class Compacted(Exception):
    """The revision to resume from was compacted away: read afresh."""


class EtcdGateway:
    def __init__(
        self, endpoints: list[str], *, call_timeout: float, watch_idle: float, probe_after: float
    ) -> None:
        self._endpoints = endpoints
        self.where = "etcd at " + ",".join(_host(endpoint) for endpoint in endpoints)
        self._current = 0  # the endpoint that answered last
        self._call_timeout = call_timeout
        self._watch_idle = watch_idle
        self._probe_after = probe_after
        self._client: httpx.AsyncClient | None = None
        self._closed = False

    async def aclose(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the gateway, trying each endpoint; the answer's JSON, or a registry error."""
        what = path.removeprefix("/v3/")
        failures: list[tuple[str, str]] = []
        for i in self._order():
            try:
                response = await self._http().post(self._endpoints[i] + path, json=body)
                answer = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                failures.append((self._endpoints[i], reason(exc, self._call_timeout)))
                continue
            if response.status_code >= 500:
                failures.append((self._endpoints[i], f"{response.status_code} {_message(answer)}"))
                continue
            self._current = i
            if response.status_code != 200 or not isinstance(answer, dict):
                why = f"{response.status_code} {_message(answer)}"
                refused = LeaseGone if "lease not found" in why else RegistryRejected
                raise refused(told(self.where, why, what))
            return answer
        raise self._none_answered(failures, what)

    async def put(self, key: str, value: str, lease: int | None) -> None:
        await self.call("/v3/kv/put", {"key": _b64(key), "value": _b64(value), "lease": str(lease)})

    async def delete(self, key: str) -> None:
        await self.call("/v3/kv/deleterange", {"key": _b64(key)})

    async def exists(self, key: str) -> bool:
        answer = await self.call("/v3/kv/range", {"key": _b64(key), "count_only": True})
        return int(answer.get("count", 0)) > 0

    async def read(self, prefix: str) -> tuple[dict[str, str], int]:
        """The values of every key under `prefix`, and the revision they were read at."""
        answer = await self.call("/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(_end(prefix))})
        revision = int(answer.get("header", {}).get("revision", 0))
        return {_unb64(kv["key"]): _unb64(kv.get("value", "")) for kv in answer.get("kvs", [])}, revision

    async def keys(self, prefix: str) -> list[str]:
        """Every key under `prefix`, without values."""
        body = {"key": _b64(prefix), "range_end": _b64(_end(prefix)), "keys_only": True}
        answer = await self.call("/v3/kv/range", body)
        return [_unb64(kv["key"]) for kv in answer.get("kvs", [])]

    async def grant(self, ttl: int) -> int:
        answer = await self.call("/v3/lease/grant", {"TTL": str(ttl)})
        if answer.get("error") or not answer.get("ID"):
            raise RegistryRejected(told(self.where, _message(answer), "lease/grant"))
        return int(answer["ID"])

    async def keepalive(self, lease: int) -> bool:
        """Renew `lease` once; False when etcd no longer knows it."""
        answer = await self.call("/v3/lease/keepalive", {"ID": str(lease)})
        return int(answer.get("result", {}).get("TTL", 0)) > 0  # no TTL: an unknown lease

    async def revoke(self, lease: int) -> None:
        await self.call("/v3/lease/revoke", {"ID": str(lease)})

    async def stream(
        self, prefix: str, revision: int
    ) -> AsyncGenerator[tuple[dict[str, str | None], int], None]:
        """The changes under `prefix` after `revision` (key -> new value, None when deleted),
        each with the revision it brings us to. Returns when the stream was quiet for
        `watch_idle`; `StreamBroken` when it failed, `Compacted` when `revision` is gone,
        `MemberFailed` when its member stopped answering or lost its leader, and
        `RegistryUnavailable` when no endpoint started it."""
        create = {"key": _b64(prefix), "range_end": _b64(_end(prefix)), "start_revision": str(revision + 1)}
        failures: list[tuple[str, str]] = []
        for i in self._order():
            endpoint = self._endpoints[i]
            async with AsyncExitStack() as stack:
                try:
                    async with asyncio.timeout(self._call_timeout):
                        lines = await self._start_watch(stack, endpoint, create)
                        first = await anext(lines, None)
                    if first is None:
                        raise StreamBroken("the stream ended before etcd answered")
                    changes, revision = _watch_response(first, revision)
                except (httpx.HTTPError, TimeoutError, StreamBroken, MemberFailed) as exc:
                    failures.append((endpoint, reason(exc, self._call_timeout)))
                    self._failed(i)
                    continue
                if failures:  # the caller hears of no failure when none is left: say it here
                    after = "; ".join(f"{failed}: {why}" for failed, why in failures)
                    log.warning("etcd watch started on %s after %s", endpoint, after)
                self._current = i
                if changes:
                    yield changes, revision
                try:
                    async with aclosing(self._probed(i, lines)) as quiet_probed:
                        async for line in quiet_probed:
                            changes, revision = _watch_response(line, revision)
                            if changes:
                                yield changes, revision
                    return  # quiet for `watch_idle`: the caller resumes from `revision`
                except MemberFailed as exc:
                    self._failed(i)
                    why = f"{_host(endpoint)} failed: {exc}; moving to the next member"
                    raise MemberFailed(told(self.where, why, "watch")) from exc
                except httpx.HTTPError as exc:
                    raise StreamBroken(reason(exc)) from exc
        raise self._none_answered(failures, "watch")

    def _none_answered(self, failures: list[tuple[str, str]], what: str) -> RegistryUnavailable:
        """The error of a call no endpoint answered: the reason, or each endpoint's if they differ."""
        reasons = {why for _, why in failures}
        if len(reasons) == 1:
            return RegistryUnavailable(told(self.where, reasons.pop(), what))
        each = "; ".join(f"{_host(endpoint)}: {why}" for endpoint, why in failures)
        return RegistryUnavailable(told(self.where, each, what))

    async def _start_watch(
        self, stack: AsyncExitStack, endpoint: str, create: dict[str, str]
    ) -> AsyncIterator[str]:
        """POST the watch's create request; its response's lines, once the head came with 200."""
        # No read timeout: quiet is normal on a watch, and `_probed` tells it from a hung member.
        timeout = httpx.Timeout(self._call_timeout, read=None)
        response = await stack.enter_async_context(
            self._http().stream(
                "POST",
                endpoint + "/v3/watch",
                json={"create_request": create},
                headers=REQUIRE_LEADER,
                timeout=timeout,
            )
        )
        if response.status_code != 200:  # 503 with "no leader", for one
            await response.aread()
            raise MemberFailed(f"status {response.status_code} {response.text[:200]}")
        return response.aiter_lines()

    async def _probed(self, i: int, lines: AsyncIterator[str]) -> AsyncGenerator[str, None]:
        """The lines of a started stream on endpoint `i`. While it is quiet, the member is asked
        for its status every `probe_after` seconds; `MemberFailed` when it does not answer in
        time. Returns once the stream was quiet for `watch_idle`; `StreamBroken` when it ended."""
        loop = asyncio.get_running_loop()
        heard = loop.time()
        pending = asyncio.ensure_future(anext(lines, None))
        try:
            while True:
                quiet_left = heard + self._watch_idle - loop.time()
                if quiet_left <= 0:
                    return
                done, _ = await asyncio.wait([pending], timeout=min(self._probe_after, quiet_left))
                if not done:
                    await self._probe_while(i, pending)
                    continue
                line = pending.result()
                if line is None:
                    raise StreamBroken("the stream ended")
                heard = loop.time()
                pending = asyncio.ensure_future(anext(lines, None))
                if line.strip():
                    yield line
        finally:
            await _cancelled(pending)

    async def _probe_while(self, i: int, pending: asyncio.Future[str | None]) -> None:
        """Ask member `i` for its status, unless the stream (`pending`) speaks first;
        `MemberFailed` when neither answers within the call timeout."""
        endpoint = self._endpoints[i]
        probe = asyncio.ensure_future(
            self._http().post(endpoint + "/v3/maintenance/status", json={}, timeout=self._call_timeout)
        )
        try:
            either: list[asyncio.Future[Any]] = [pending, probe]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if pending.done():
                return  # the stream spoke: its member is alive
        finally:
            await _cancelled(probe)
        try:
            probe.result().raise_for_status()
        except httpx.HTTPError as exc:
            why = (
                f"status {exc.response.status_code}"
                if isinstance(exc, httpx.HTTPStatusError)
                else reason(exc, self._call_timeout)
            )
            raise MemberFailed(f"a status request while the stream was quiet: {why}") from exc

    def _failed(self, i: int) -> None:
        """Endpoint `i` failed: the next call starts on the one after it (unless another call
        has moved on already)."""
        if self._current == i:
            self._current = (i + 1) % len(self._endpoints)

    def _http(self) -> httpx.AsyncClient:
        if self._closed:  # never a new client after aclose(), for a watch that still runs
            raise RegistryClosed("EtcdRegistry is closed")
        if self._client is None:
            # trust_env off: a proxy from the environment must not sit between us and etcd.
            self._client = httpx.AsyncClient(timeout=self._call_timeout, trust_env=False)
        return self._client

    def _order(self) -> list[int]:
        return [(self._current + i) % len(self._endpoints) for i in range(len(self._endpoints))]


async def _cancelled(task: asyncio.Future[Any]) -> None:
    """Cancel `task` and wait until it ended. What it raised counts as retrieved (asyncio logs
    no "never retrieved"), and `result()` still raises it."""
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()


def _watch_response(line: str, revision: int) -> tuple[dict[str, str | None], int]:
    """The changes one line of the watch stream brings, and the revision they bring us to."""
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise StreamBroken(f"not JSON: {line[:200]!r}") from exc
    result = message.get("result") if isinstance(message, dict) else None
    if not isinstance(result, dict):
        error = message.get("error") if isinstance(message, dict) else None
        if isinstance(error, dict) and str(error.get("grpc_code")) == GRPC_UNAVAILABLE:
            raise MemberFailed(str(error.get("message", line[:300])))  # "etcdserver: no leader", for one
        raise StreamBroken(f"etcd watch error: {line[:300]}")
    if result.get("compact_revision") not in (None, "0"):
        raise Compacted()
    if result.get("canceled"):
        raise StreamBroken(f"etcd canceled the watch: {result.get('cancel_reason', '')}")
    changes: dict[str, str | None] = {}
    for event in result.get("events") or []:
        kv = event.get("kv", {})
        # PUT is the enum's zero value, which the gateway leaves out.
        changes[_unb64(kv["key"])] = None if event.get("type") == "DELETE" else _unb64(kv.get("value", ""))
        revision = max(revision, int(kv.get("mod_revision", revision)))
    return changes, revision


def _host(endpoint: str) -> str:
    return endpoint.removeprefix("http://")


def _end(prefix: str) -> str:
    """The range end that covers every key starting with `prefix` (ends in '/', so +1 is safe)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode(errors="replace")


def _message(answer: object) -> str:
    return str(answer.get("message") or answer) if isinstance(answer, dict) else repr(answer)[:300]
