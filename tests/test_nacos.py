"""Nacos as Nacos's own clients see it, on a real Nacos server (interop/nacos-server): what a
provider sidecar's instance holds, the offline sequence as `enabled=false` then a delete, and a
server that lost its instances. The contract every backend keeps is
tests/test_registry_contract.py's."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from registry_adapters import Instance, RegistryUnavailable
from registry_adapters.nacos import NacosRegistry
from registry_adapters.nacos_layout import ID_KEY
from sidecar.protocol import metadata as meta
from tests.support.nacos_server import NacosServer
from tests.support.procs import consumer_of, demo_app, sidecar, wait_for
from tests.support.registry_view import nacos_instances

pytestmark = pytest.mark.nacos

# The quiet period of the offline test: long enough to look at Nacos while /shutdown waits.
QUIET_S = 6.0
# Nacos shows a registration or an `enabled` change after its own delay (0.5-1.5 s measured).
SHOWN_S = 5.0


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("nacos://127.0.0.1", "nacos at 127.0.0.1:8848"),
        ("nacos://10.0.0.1:18848/?group=G&namespace=dev", "nacos at 10.0.0.1:18848"),
        ("nacos://a:1,b,[::1]:2", "nacos at a:1,b:8848,[::1]:2"),
    ],
)
def test_url_forms(url: str, where: str) -> None:
    """Several servers, each with its own port (8848 by default); the API is at /nacos."""
    assert NacosRegistry.from_url(urlsplit(url)).where == where


def listed(server: NacosServer, service: str) -> list[dict[str, Any]]:
    """The instances Nacos hands its clients: healthy and enabled ones, through its open API."""
    params = {"serviceName": service, "healthyOnly": "true"}
    answer = httpx.get(f"{server.http}/v2/ns/instance/list", params=params, timeout=10, verify=False)
    answer.raise_for_status()
    hosts: list[dict[str, Any]] = answer.json()["data"]["hosts"]
    return hosts


def enabled(server: NacosServer, service: str) -> dict[str, bool]:
    """Every instance Nacos holds for `service` (by our id): enabled or not."""
    return {host["metadata"][ID_KEY]: host["enabled"] for host in nacos_instances(server.url, service)}


def test_instance_serves_then_leaves_as_nacos_clients_see_it(
    tmp_path: Path, nacos_server: NacosServer
) -> None:
    """The instance holds the address, Nacos's weight, the sidecar's keys and its id in the
    metadata, and a heartbeat timeout of the TTL; a consumer sidecar calls it through Nacos.
    /shutdown disables then deletes it (out of what Nacos hands out) while /shutdown still
    waits, and the consumer drops it; nothing is left after the sidecar's exit."""
    args = ("--instance-id", "p1", "--quiet-period", str(QUIET_S))
    with demo_app(tmp_path, "nacos-app") as app:
        with sidecar(tmp_path, nacos_server.url, app, *args, service="svc") as car:
            wait_for(lambda: len(listed(nacos_server, "svc")) == 1, SHOWN_S, "the instance listed")
            [host] = listed(nacos_server, "svc")
            assert (host["ip"], host["port"], host["weight"]) == ("127.0.0.1", car.listen_port, 100.0)
            assert (host["enabled"], host["healthy"], host["ephemeral"]) == (True, True, True)
            metadata: dict[str, str] = host["metadata"]
            assert metadata[ID_KEY] == "p1"
            assert metadata[meta.META_ADMIN] == car.admin
            assert metadata[meta.META_WEIGHT] == "100"
            assert meta.META_START_MS in metadata
            # The default TTL, 10 s: a beat every 3.3 s, unhealthy after 10 s, deleted after 20.
            assert host["instanceHeartBeatTimeOut"] == 10000
            assert host["ipDeleteTimeout"] == 20000
            with consumer_of(tmp_path, nacos_server.url, "p1") as (consumer, port):
                answer = httpx.get(f"http://127.0.0.1:{port}/work", timeout=10, verify=False)
                assert answer.json()["instance"] == "nacos-app"
                with concurrent.futures.ThreadPoolExecutor(1) as pool:
                    shutdown = pool.submit(httpx.get, f"{car.admin}/shutdown", timeout=60)
                    wait_for(lambda: listed(nacos_server, "svc") == [], SHOWN_S, "the instance unlisted")
                    # Disabled at step 2, deleted right after it (set_offline, then deregister).
                    assert enabled(nacos_server, "svc") in ({"p1": False}, {})
                    assert not shutdown.done(), "Nacos showed the change only after /shutdown answered"

                    def dropped() -> bool:
                        return not consumer.status()["upstreams"]["svc"]["instances"]

                    wait_for(dropped, SHOWN_S, "the consumer to drop the instance")
                    assert shutdown.result().status_code == 200
        wait_for(lambda: enabled(nacos_server, "svc") == {}, SHOWN_S, "the instance deleted")


async def test_server_restart_gets_the_instance_back(nacos_server: NacosServer) -> None:
    """With the server down every call fails fast with RegistryUnavailable; a restarted server
    (ephemeral instances live in memory) answers the next heartbeat 20404, and the instance is
    registered again as it is wanted now: with the weight set while the server was down. The
    session's server, restarted (a Nacos JVM takes long to start; the tests of this process run
    one at a time, and the others' instances are back at their next heartbeat too)."""
    instance = Instance("restarted", "r1", "10.0.0.1", 8081, 100, {meta.META_WEIGHT: "100"})
    async with NacosRegistry.from_url(urlsplit(nacos_server.url), ttl=3) as registry:
        await registry.register(instance)
        await asyncio.to_thread(wait_for, lambda: len(listed(nacos_server, "restarted")) == 1, SHOWN_S)
        await asyncio.to_thread(nacos_server.stop)
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable, match="connection refused"):
            await registry.set_weight("r1", 30)
        with pytest.raises(RegistryUnavailable):
            await registry.services()
        assert time.monotonic() - started < 3.0
        await asyncio.to_thread(nacos_server.start)

        def back_at_30() -> bool:
            return [host["weight"] for host in listed(nacos_server, "restarted")] == [30.0]

        await asyncio.to_thread(wait_for, back_at_30, SHOWN_S * 2, "the instance back, at weight 30")
        assert "restarted" in await registry.services()
