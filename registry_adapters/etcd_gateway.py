"""A client of etcd v3's JSON gateway (the gRPC gateway every etcd server has), over httpx.

The calls the etcd backend makes, and nothing of what it makes of them: `/v3/kv/put|range|
deleterange`, `/v3/lease/grant|keepalive|revoke` and `/v3/watch`, a stream of JSON lines. Keys
and values travel in base64 and int64 as strings. Each call goes first to the endpoint that
answered last, then to the others; it answers the JSON, or raises `RegistryUnavailable` when no
endpoint answered and `RegistryRejected` when one refused (`LeaseGone` for an unknown lease).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from registry_adapters.base import RegistryClosed, RegistryRejected, RegistryUnavailable


class LeaseGone(RegistryRejected):
    """etcd does not know the lease (expired, revoked, or lost with the data dir)."""


class StreamBroken(Exception):
    """The watch stream ended or failed after it was set up; resume it."""


class Compacted(Exception):
    """The revision to resume from was compacted away: read afresh."""


class EtcdGateway:
    def __init__(self, endpoints: list[str], *, call_timeout: float, watch_idle: float) -> None:
        self._endpoints = endpoints
        self._current = 0  # the endpoint that answered last
        self._call_timeout = call_timeout
        self._watch_idle = watch_idle
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
                raise (LeaseGone if "lease not found" in message else RegistryRejected)(message)
            return answer
        raise RegistryUnavailable(f"etcd {what}: no endpoint answered ({'; '.join(failures)})")

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

    async def grant(self, ttl: int) -> int:
        answer = await self.call("/v3/lease/grant", {"TTL": str(ttl)})
        if answer.get("error") or not answer.get("ID"):
            raise RegistryRejected(f"etcd lease/grant: {_message(answer)}")
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
        each with the revision it brings us to. Returns when the stream was idle for
        `watch_idle`; `StreamBroken` when it failed, `Compacted` when `revision` is gone."""
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
                            changes, revision = _watch_response(line, revision)
                            if changes:
                                yield changes, revision
            except httpx.ReadTimeout:
                return  # idle: the caller resumes from `revision`
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failures.append(f"{self._endpoints[i]}: {exc!r}")
                continue
            except httpx.HTTPError as exc:
                raise StreamBroken(repr(exc)) from exc
            raise StreamBroken("the stream ended")
        raise RegistryUnavailable(f"etcd watch: no endpoint answered ({'; '.join(failures)})")

    def _http(self) -> httpx.AsyncClient:
        if self._closed:  # never a new client after aclose(), for a watch that still runs
            raise RegistryClosed("EtcdRegistry is closed")
        if self._client is None:
            # trust_env off: a proxy from the environment must not sit between us and etcd.
            self._client = httpx.AsyncClient(timeout=self._call_timeout, trust_env=False)
        return self._client

    def _order(self) -> list[int]:
        return [(self._current + i) % len(self._endpoints) for i in range(len(self._endpoints))]


def _watch_response(line: str, revision: int) -> tuple[dict[str, str | None], int]:
    """The changes one line of the watch stream brings, and the revision they bring us to."""
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise StreamBroken(f"not JSON: {line[:200]!r}") from exc
    result = message.get("result") if isinstance(message, dict) else None
    if not isinstance(result, dict):
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


def _end(prefix: str) -> str:
    """The range end that covers every key starting with `prefix` (ends in '/', so +1 is safe)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode(errors="replace")


def _message(answer: object) -> str:
    return str(answer.get("message") or answer) if isinstance(answer, dict) else repr(answer)[:300]
