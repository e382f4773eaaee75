"""What a registry holds, read from outside the sidecar: Consul through its HTTP API (the catalog,
so an instance in maintenance still counts as present), SQLite through the adapter's own watch."""

from __future__ import annotations

import asyncio
import concurrent.futures
from contextlib import aclosing
from typing import Any
from urllib.parse import urlsplit

import httpx

from registry_adapters import Instance, open_registry


def consul_http(registry_url: str) -> str:
    parts = urlsplit(registry_url)
    return f"http://{parts.hostname}:{parts.port}"


def consul_services(registry_url: str, service: str) -> list[dict[str, Any]]:
    """Every catalog entry of `service`, whatever its health."""
    entries: list[dict[str, Any]] = httpx.get(
        f"{consul_http(registry_url)}/v1/catalog/service/{service}"
    ).json()
    return entries


def consul_weights(registry_url: str, service: str) -> dict[str, int]:
    return {
        entry["ServiceID"]: entry["ServiceWeights"]["Passing"]
        for entry in consul_services(registry_url, service)
    }


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
    if registry_url.startswith("consul://"):
        return {entry["ServiceID"] for entry in consul_services(registry_url, service)}
    return {instance.instance_id for instance in watched(registry_url, service)}
