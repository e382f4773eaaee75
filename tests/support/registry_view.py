"""What a registry holds, read from outside the sidecar: Consul through its HTTP API (the catalog,
so an instance in maintenance still counts as present), etcd through its JSON gateway (the keys
of go-kratos's layout: an offline instance's key is gone), ZooKeeper through a kazoo client of
its own (the nodes of the URL's layout: an offline instance's node is gone), Eureka through
its REST API (an instance out of service is still there), Nacos through its catalog (a
disabled instance is still there), SQLite through its
table (every row, so an instance set offline, at weight 0 or expired still counts as present
until it is deleted), and any of them through the adapter's own watch (what consumers are
handed)."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import sqlite3
from contextlib import aclosing, closing, suppress
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import httpx
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from registry_adapters import Instance, open_registry
from registry_adapters.zookeeper import ZooKeeperRegistry


def consul_http(registry_url: str) -> str:
    parts = urlsplit(registry_url)
    return f"http://{parts.hostname}:{parts.port}"


def consul_services(registry_url: str, service: str) -> list[dict[str, Any]]:
    """Every catalog entry of `service`, whatever its health."""
    entries: list[dict[str, Any]] = httpx.get(
        f"{consul_http(registry_url)}/v1/catalog/service/{service}", verify=False
    ).json()
    return entries


def consul_weights(registry_url: str, service: str) -> dict[str, int]:
    return {
        entry["ServiceID"]: entry["ServiceWeights"]["Passing"]
        for entry in consul_services(registry_url, service)
    }


def etcd_values(registry_url: str, service: str, prefix: str = "/microservices") -> list[dict[str, Any]]:
    """The JSON values under `PREFIX/SERVICE/`, read through etcd's JSON gateway (first endpoint)."""
    parts = urlsplit(registry_url)
    endpoint = parts.netloc.split(",")[0]
    start = f"{prefix}/{service}/"
    body = {"key": _b64(start), "range_end": _b64(start[:-1] + "0")}  # "0" follows "/"
    answer = httpx.post(
        f"http://{endpoint}/v3/kv/range", json=body, timeout=10, trust_env=False, verify=False
    )
    answer.raise_for_status()
    return [json.loads(base64.b64decode(kv["value"])) for kv in answer.json().get("kvs", [])]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def zookeeper_nodes(registry_url: str, service: str) -> dict[str, bytes]:
    """The children of `service`'s node in the URL's layout (name -> data), read with a kazoo
    client of its own."""
    parts = urlsplit(registry_url)
    layout = ZooKeeperRegistry.from_url(parts).layout
    client = KazooClient(hosts=parts.netloc + parts.path.rstrip("/"), timeout=10.0)
    client.start(timeout=10.0)
    try:
        parent = layout.parent(service)
        names = client.get_children(parent) if client.exists(parent) else []
        nodes = {}
        for name in names:
            # An instance may leave between the listing and the read: then it is not there.
            with suppress(NoNodeError):
                nodes[name] = client.get(f"{parent}/{name}")[0]
        return nodes
    finally:
        client.stop()
        client.close()


def eureka_get(registry_url: str, *segments: str) -> Any:
    """The JSON of `/apps/SEGMENT/...` (each percent-encoded) from the URL's first Eureka server,
    None when Eureka answers 404."""
    parts = urlsplit(registry_url)
    server = (parts.netloc + parts.path).split(",")[0]
    path = "/".join(quote(segment, safe="") for segment in segments)
    answer = httpx.get(
        f"http://{server}/apps/{path}", headers={"Accept": "application/json"}, timeout=10, verify=False
    )
    if answer.status_code == 404:
        return None
    answer.raise_for_status()
    return answer.json()


def eureka_instances(registry_url: str, service: str) -> list[dict[str, Any]]:
    """Every InstanceInfo of `service`'s application, whatever its status, read through Eureka's
    REST API (the first server of the URL)."""
    if (body := eureka_get(registry_url, service.upper())) is None:
        return []
    infos = body["application"]["instance"]
    return infos if isinstance(infos, list) else [infos]


def instance_present(registry_url: str, service: str, instance_id: str) -> bool:
    """Whether the registry still holds `instance_id` of `service`. On Eureka this reads the
    instance's own resource, which the server answers from its registry: a listing comes from
    its response cache, and a listing being computed while a cancel invalidates that cache is
    stored anyway (a Guava cache drops no load in progress), stale until the cache expires."""
    if registry_url.startswith("eureka://"):
        return eureka_get(registry_url, service.upper(), instance_id) is not None
    return instance_id in registered_ids(registry_url, service)


def nacos_instances(registry_url: str, service: str) -> list[dict[str, Any]]:
    """Every instance of `service` in the URL's namespace and group, enabled or not, healthy or
    not, read through Nacos's catalog (the first server of the URL)."""
    parts = urlsplit(registry_url)
    query = parse_qs(parts.query)
    params = {
        "serviceName": service,
        "groupName": query.get("group", ["DEFAULT_GROUP"])[-1],
        "namespaceId": query.get("namespace", ["public"])[-1],
        "clusterName": "DEFAULT",
        "pageNo": "1",
        "pageSize": "1000",
    }
    server = parts.netloc.split(",")[0]
    answer = httpx.get(
        f"http://{server}/nacos/v1/ns/catalog/instances", params=params, timeout=10, verify=False
    )
    if answer.status_code == 404:  # "service ... is not found!", "cluster DEFAULT is not found!"
        return []
    answer.raise_for_status()
    instances: list[dict[str, Any]] = answer.json()["list"]
    return instances


def zookeeper_ids(registry_url: str, service: str) -> set[str]:
    parts = urlsplit(registry_url)
    layout = ZooKeeperRegistry.from_url(parts).layout
    found = (
        layout.parse(service, name, data) for name, data in zookeeper_nodes(registry_url, service).items()
    )
    return {instance.instance_id for instance in found if instance is not None}


def watched(registry_url: str, service: str) -> list[Instance]:
    """The first list the adapter's watch yields (instances that should get traffic)."""

    async def first() -> list[Instance]:
        async with open_registry(registry_url) as registry, aclosing(registry.watch(service)) as watch:
            async for instances in watch:
                return instances
        return []

    # In a thread of its own, so that async tests can call it too.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, first()).result(timeout=30)


def registered_ids(registry_url: str, service: str) -> set[str]:
    """Instances of `service` the registry still holds, whether or not they get traffic:
    deregistered ones are gone, offline ones are not."""
    if registry_url.startswith("consul://"):
        return {entry["ServiceID"] for entry in consul_services(registry_url, service)}
    if registry_url.startswith("etcd://"):
        return {str(value["id"]) for value in etcd_values(registry_url, service)}
    if registry_url.startswith("zookeeper://"):
        return zookeeper_ids(registry_url, service)
    if registry_url.startswith("eureka://"):
        return {str(info["instanceId"]) for info in eureka_instances(registry_url, service)}
    if registry_url.startswith("nacos://"):
        return {
            str(host["metadata"]["sidecar_instance_id"]) for host in nacos_instances(registry_url, service)
        }
    read_only = Path(unquote(urlsplit(registry_url).path)).as_uri() + "?mode=ro"
    with closing(sqlite3.connect(read_only, uri=True, timeout=10)) as db:
        rows = db.execute("SELECT instance_id FROM instances WHERE service = ?", (service,)).fetchall()
    return {instance_id for (instance_id,) in rows}
