"""Raw reads and writes on an etcd member through its JSON gateway, from outside the adapter: what a
consumer without a sidecar (a go-kratos client, etcdctl) would see, and what it could break."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx

from tests.support.etcd_server import EtcdServer


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def call(server: EtcdServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = httpx.post(f"{server.http}{path}", json=body, timeout=10, trust_env=False, verify=False)
    answer.raise_for_status()
    result: dict[str, Any] = answer.json()
    return result


def get(server: EtcdServer, key: str) -> dict[str, Any] | None:
    """The key-value at `key` with its value decoded (`value`: text, `lease`: int), or None."""
    kvs = call(server, "/v3/kv/range", {"key": b64(key)}).get("kvs", [])
    if not kvs:
        return None
    kv: dict[str, Any] = kvs[0]
    return {**kv, "value": base64.b64decode(kv.get("value", "")).decode(), "lease": int(kv.get("lease", 0))}


def get_json(server: EtcdServer, key: str) -> Any:
    kv = get(server, key)
    return None if kv is None else json.loads(kv["value"])


def put(server: EtcdServer, key: str, value: str, lease: int = 0) -> None:
    call(server, "/v3/kv/put", {"key": b64(key), "value": b64(value), "lease": str(lease)})


def lease_ttl(server: EtcdServer, lease: int) -> int:
    """Seconds left on `lease`; -1 once etcd no longer knows it."""
    return int(call(server, "/v3/lease/timetolive", {"ID": str(lease)}).get("TTL", -1))


def revoke(server: EtcdServer, lease: int) -> None:
    call(server, "/v3/lease/revoke", {"ID": str(lease)})
