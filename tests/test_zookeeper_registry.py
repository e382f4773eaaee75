"""ZooKeeper backend: its two layouts as their own consumers read them, checked against fixtures
written from the projects' sources (cited in registry_adapters/zookeeper_layouts.py), and what
only ZooKeeper does: ephemeral nodes of a session, which a killed process leaves behind until the
session expires, and which a session established anew must publish again.

The contract suite (test_registry_contract.py) runs on the Curator layout through
`registry_url`; its generic tests run here again on the Dubbo layout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from asyncio.subprocess import PIPE
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import suppress
from pathlib import Path
from urllib.parse import unquote_plus, urlsplit

import httpx
import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from registry_adapters import Instance, Registry, RegistryUnavailable, open_registry
from registry_adapters.zookeeper import ZooKeeperRegistry
from registry_adapters.zookeeper_layouts import CuratorLayout, DubboLayout, dubbo_encode
from sidecar.protocol.metadata import (
    META_PROTOCOLS,
    META_START_MS,
    META_WARMUP_S,
    META_WEIGHT,
    META_WEIGHT_OVERRIDE,
    PROTOCOLS,
)
from tests import test_registry_contract as contract
from tests.support.consul_agent import REPO_ROOT
from tests.support.procs import demo_app, sidecar, wait_for
from tests.support.registry_view import zookeeper_nodes
from tests.support.zookeeper_server import ZooKeeperServer

pytestmark = pytest.mark.zookeeper

STEP_S = contract.STEP_S
SHORT_TTL_S = 2.0
FAST_FAILURE_S = 3.0
watching, watch_until, next_list = contract.watching, contract.watch_until, contract.next_list

# -- fixtures written from the projects' sources ---------------------------------------------------

# What Spring Cloud Zookeeper 4 (Curator 5's JsonInstanceSerializer, Jackson) writes for an
# application `orders` on 10.0.0.7:8080: ServiceInstance's properties, the payload typed by
# `@class`, the default uriSpec "{scheme}://{address}:{port}".
SPRING_CLOUD_NODE = {
    "name": "orders",
    "id": "3f1d8a52-0f25-4c41-9a86-1c2a7c3e5b11",
    "address": "10.0.0.7",
    "port": 8080,
    "sslPort": None,
    "payload": {
        "@class": "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance",
        "id": "orders-1",
        "name": "orders",
        "metadata": {"instance_status": "UP", "weight": "3"},
    },
    "registrationTimeUTC": 1764500000000,
    "serviceType": "DYNAMIC",
    "uriSpec": {
        "parts": [
            {"value": "scheme", "variable": True},
            {"value": "://", "variable": False},
            {"value": "address", "variable": True},
            {"value": ":", "variable": False},
            {"value": "port", "variable": True},
        ]
    },
    "enabled": True,
}
# Curator's ServiceInstance properties (ServiceInstance.java's getters): nothing else may be
# written, Jackson's default ObjectMapper fails on unknown properties.
CURATOR_PROPERTIES = {
    "name",
    "id",
    "address",
    "port",
    "sslPort",
    "payload",
    "registrationTimeUTC",
    "serviceType",
    "uriSpec",
    "enabled",
}
SPRING_PAYLOAD_PROPERTIES = {"@class", "id", "name", "metadata"}  # ZookeeperInstance.java
# A provider node as Dubbo 2.7's ZookeeperRegistry names it (URL.encode of toFullString, its
# parameters sorted), under /dubbo/org.example.DemoService/providers.
DUBBO_PROVIDER_NODE = (
    "dubbo%3A%2F%2F10.0.0.8%3A20880%2Forg.example.DemoService%3Fanyhost%3Dtrue%26application%3D"
    "demo-provider%26deprecated%3Dfalse%26dubbo%3D2.0.2%26dynamic%3Dtrue%26generic%3Dfalse%26"
    "interface%3Dorg.example.DemoService%26methods%3DsayHello%26pid%3D4242%26release%3D2.7.23%26"
    "side%3Dprovider%26timestamp%3D1764500000000%26warmup%3D60000%26weight%3D50"
)


def sidecar_instance(weight: int = 100, **meta: str) -> Instance:
    fields = {META_WEIGHT: "100", META_START_MS: "1764500000000", META_WARMUP_S: "30", **meta}
    return Instance("orders", "orders-10.0.0.9-8080", "10.0.0.9", 8080, weight, fields)


def dubbo_params(name: str) -> dict[str, str]:
    """The parameters of an encoded Dubbo provider URL, in their order."""
    query = urlsplit(unquote_plus(name)).query
    return dict(pair.split("=", 1) for pair in query.split("&"))


def test_curator_node_is_what_spring_cloud_reads() -> None:
    """The Curator node holds exactly Curator's ServiceInstance properties, a Spring Cloud
    ZookeeperInstance payload, and the weight in the payload's metadata."""
    node = CuratorLayout().node(sidecar_instance(weight=40), 1764500001234)
    document = json.loads(node.data)
    assert node.name == "orders-10.0.0.9-8080"
    assert set(document) == CURATOR_PROPERTIES
    assert set(document["payload"]) == SPRING_PAYLOAD_PROPERTIES
    assert document["payload"]["@class"] == SPRING_CLOUD_NODE["payload"]["@class"]  # type: ignore[index]
    assert document["uriSpec"] == SPRING_CLOUD_NODE["uriSpec"]
    assert (document["serviceType"], document["enabled"], document["sslPort"]) == ("DYNAMIC", True, None)
    assert (document["name"], document["id"], document["address"], document["port"]) == (
        "orders",
        "orders-10.0.0.9-8080",
        "10.0.0.9",
        8080,
    )
    assert document["registrationTimeUTC"] == 1764500001234
    assert document["payload"]["metadata"] == {**sidecar_instance().meta, "weight": "40"}


def test_curator_layout_reads_a_spring_cloud_node() -> None:
    """A node Spring Cloud registered reads as an instance: id, address, port, the metadata
    weight, the rest of the metadata kept."""
    instance = CuratorLayout().parse("orders", "x", json.dumps(SPRING_CLOUD_NODE).encode())
    assert instance == Instance(
        "orders", "3f1d8a52-0f25-4c41-9a86-1c2a7c3e5b11", "10.0.0.7", 8080, 3, {"instance_status": "UP"}
    )


def test_curator_layout_skips_what_gets_no_traffic() -> None:
    """Disabled instances, weight 0 and malformed JSON are left out of the watch."""
    layout = CuratorLayout()
    disabled = {**SPRING_CLOUD_NODE, "enabled": False}
    zero = json.loads(layout.node(sidecar_instance(weight=0), 0).data)
    assert layout.parse("orders", "a", json.dumps(disabled).encode()) is None
    assert layout.parse("orders", "b", json.dumps(zero).encode()) is None
    assert layout.parse("orders", "c", b"{not json") is None
    assert layout.parse("orders", "d", json.dumps({**SPRING_CLOUD_NODE, "port": "80"}).encode()) is None


def test_dubbo_encode_is_java_urlencoder() -> None:
    """Node names are encoded as Java's URLEncoder does (Dubbo's URL.encode)."""
    assert dubbo_encode("a b*c~d/e:f?g=h&i.j-k_l") == "a+b*c%7Ed%2Fe%3Af%3Fg%3Dh%26i.j-k_l"


def test_dubbo_node_is_a_provider_url() -> None:
    """The Dubbo node's name is the encoded provider URL with timestamp, warmup 0 and the weight;
    its parameters sorted as URL.toFullString writes them; Dubbo's consumers keep it."""
    node = DubboLayout().node(sidecar_instance(weight=100), 1764500001234)
    assert node.data == b""
    assert "%3A%2F%2F" in node.name  # ZookeeperRegistry.toUrlsWithoutEmpty's filter
    assert unquote_plus(node.name).startswith("dubbo://10.0.0.9:8080/orders?")
    params = dubbo_params(node.name)
    assert list(params) == sorted(params)
    assert params["interface"] == "orders"
    assert params["side"] == "provider"
    assert params["dynamic"] == "true"
    assert (params["timestamp"], params["warmup"], params["weight"]) == ("1764500000000", "0", "100")
    assert params["sidecar_instance_id"] == "orders-10.0.0.9-8080"


def test_dubbo_node_carries_the_sidecars_weight() -> None:
    """The Dubbo node carries the weight the sidecar publishes (its warmup steps, an override),
    with `warmup` 0: Dubbo 3.0-3.3.6 read no `timestamp` and would not ramp by themselves, and a
    Dubbo that does must not ramp on top of the steps."""
    layout = DubboLayout()
    for weight in (12, 60, 100):
        params = dubbo_params(layout.node(sidecar_instance(weight=weight), 0).name)
        assert (params["weight"], params["warmup"]) == (str(weight), "0")
    overridden = sidecar_instance(weight=7, **{META_WEIGHT_OVERRIDE: "7"})
    assert dubbo_params(layout.node(overridden, 0).name)["weight"] == "7"


def test_dubbo_layout_reads_a_dubbo_provider() -> None:
    """A provider node Dubbo registered reads as an instance with its address as id and its weight."""
    instance = DubboLayout().parse("org.example.DemoService", DUBBO_PROVIDER_NODE, b"")
    assert instance == Instance("org.example.DemoService", "10.0.0.8:20880", "10.0.0.8", 20880, 50, {})


def test_dubbo_layout_reads_back_what_it_writes() -> None:
    """A sidecar's node reads back as the instance: its id and metadata from the parameters."""
    instance = sidecar_instance(
        weight=70,
        **{META_WEIGHT_OVERRIDE: "70", "sidecar_admin": "http://h:1/x?a=b&c", META_PROTOCOLS: PROTOCOLS},
    )
    layout = DubboLayout(protocol="tri")
    node = layout.node(instance, 0)
    assert unquote_plus(node.name).startswith("tri://")
    assert layout.parse("orders", node.name, b"") == instance
    assert layout.owner(node.name) == instance.instance_id


def test_dubbo_layout_skips_what_gets_no_traffic() -> None:
    """Disabled providers, other categories, weight 0 and non-URLs are left out."""
    layout = DubboLayout()
    base = unquote_plus(DUBBO_PROVIDER_NODE)
    for changed in (
        base + "&enabled=false",
        base.replace("weight=50", "weight=0"),
        base + "&category=routers",
    ):
        assert layout.parse("org.example.DemoService", dubbo_encode(changed), b"") is None
    assert layout.parse("org.example.DemoService", "not-a-url", b"") is None


# -- on a real server ------------------------------------------------------------------------------


service, make = contract.service, contract.make  # the contract's fixtures, for this module too


@pytest.fixture(params=["curator", "dubbo"])
def layout(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def zk_url(zookeeper_server: ZooKeeperServer, layout: str) -> str:
    return f"{zookeeper_server.url}?layout={layout}"


def raw_client(server: ZooKeeperServer) -> KazooClient:
    client = KazooClient(hosts=server.hosts, timeout=10.0)
    client.start(timeout=10.0)
    return client


async def test_nodes_are_ephemeral_in_the_layout(
    zookeeper_server: ZooKeeperServer, layout: str, make: Callable[..., Instance]
) -> None:
    """register creates one ephemeral node of the registry's session where the layout says,
    which a client of the layout's consumers reads back."""
    url = f"{zookeeper_server.url}?layout={layout}"
    async with open_registry(url) as registry:
        await registry.register(make())
        client = raw_client(zookeeper_server)
        try:
            parent = CuratorLayout().parent(make().service) if layout == "curator" else None
            parent = parent or DubboLayout().parent(make().service)
            [name] = client.get_children(parent)
            data, stat = client.get(f"{parent}/{name}")
        finally:
            client.stop()
            client.close()
        assert stat.ephemeralOwner != 0
    if layout == "curator":
        assert name == make().instance_id
        assert json.loads(data)["payload"]["metadata"]["weight"] == "100"
    else:
        assert unquote_plus(name).startswith(f"dubbo://10.0.0.1:8081/{make().service}?")
    assert zookeeper_nodes(url, make().service) == {}  # close() ended the session: the node went


async def test_dubbo_weight_change_replaces_the_node(
    zookeeper_server: ZooKeeperServer, make: Callable[..., Instance]
) -> None:
    """In the Dubbo layout a weight change leaves exactly one node, the one with the new weight."""
    url = f"{zookeeper_server.url}?layout=dubbo"
    async with open_registry(url) as registry:
        await registry.register(make())
        await registry.set_weight(make().instance_id, 40)
        [name] = zookeeper_nodes(url, make().service)
        assert dubbo_params(name)["weight"] == "40"


async def test_chroot_is_created(zookeeper_server: ZooKeeperServer, make: Callable[..., Instance]) -> None:
    """A chroot that does not exist yet is created; the instance is published inside it."""
    chroot = f"/{make().service}/apps"
    url = f"{zookeeper_server.url}{chroot}"
    async with open_registry(url) as registry, watching(registry, make().service) as watch:
        await registry.register(make())
        await watch_until(watch, lambda instances: instances == [make()])
    client = raw_client(zookeeper_server)
    try:
        assert client.exists(f"{chroot}/services/{make().service}") is not None
    finally:
        client.stop()
        client.close()


def test_sidecarless_consumer_sees_warmup_and_departure(tmp_path: Path, zk_url: str, layout: str) -> None:
    """What a consumer without a sidecar reads while a real sidecar warms up and shuts down:
    the weight rises in steps (Curator's metadata weight; the `weight` of Dubbo's URL, `warmup`
    0, the node replaced at each step); the node is gone once /shutdown has answered."""
    service = f"plain-{uuid.uuid4().hex[:8]}"
    parts = urlsplit(zk_url)
    reader = ZooKeeperRegistry.from_url(parts).layout
    client = KazooClient(hosts=parts.netloc, timeout=10.0)
    client.start(timeout=10.0)
    parent = reader.parent(service)

    def nodes() -> dict[str, bytes]:
        names = client.get_children(parent) if client.exists(parent) else []
        found = {}
        for name in names:
            # A Dubbo node is replaced at each weight step: one listed may be gone by its read.
            with suppress(NoNodeError):
                found[name] = client.get(f"{parent}/{name}")[0]
        return found

    try:
        with (
            demo_app(tmp_path) as app,
            sidecar(tmp_path, zk_url, app, "--warmup", "3", service=service) as car,
        ):
            seen: list[dict[str, bytes]] = []
            while car.status()["phase"] == "warming":  # an external process: sample until it is warm
                seen.append(nodes())
                time.sleep(0.1)
            seen.append(wait_for(nodes, what="the node after warmup"))
            # One node at a time (a step replaces it in one transaction); none when a read lost the
            # race with a replacement.
            assert all(len(sample) <= 1 for sample in seen)
            if layout == "curator":
                documents = [json.loads(data) for sample in seen for data in sample.values()]
                weights = [int(document["payload"]["metadata"]["weight"]) for document in documents]
            else:
                urls = [dubbo_params(name) for sample in seen for name in sample]
                assert {params["warmup"] for params in urls} == {"0"}
                assert {params["timestamp"] for params in urls} == {urls[0][META_START_MS]}
                weights = [int(params["weight"]) for params in urls]
            assert len(set(weights)) > 2
            assert weights == sorted(weights)
            assert weights[-1] == 100
            body = httpx.get(f"{car.admin}/shutdown", timeout=30, verify=False).json()
            assert body["deregistered"] is True
            assert nodes() == {}
    finally:
        client.stop()
        client.close()


KILLED_PROVIDER = """
import asyncio, sys
from urllib.parse import urlsplit
from registry_adapters.base import Instance
from registry_adapters.zookeeper import ZooKeeperRegistry

async def main() -> None:
    url, service, ttl = sys.argv[1], sys.argv[2], float(sys.argv[3])
    registry = ZooKeeperRegistry.from_url(urlsplit(url), ttl=ttl)
    await registry.register(Instance(service, service + "-1", "10.0.0.1", 8081))
    print("registered", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def only_the_provider(instances: list[Instance]) -> bool:
    return [i.address for i in instances] == ["10.0.0.1:8081"]


@contextlib.asynccontextmanager
async def watched_provider(
    zk_url: str, service: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, AsyncGenerator[list[Instance], None]]]:
    """KILLED_PROVIDER running, and a watch of `service` that has seen its node; the process is
    killed by pid on the way out."""
    provider = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLED_PROVIDER, zk_url, service, str(SHORT_TTL_S), stdout=PIPE, cwd=REPO_ROOT
    )
    try:
        assert provider.stdout is not None
        assert await asyncio.wait_for(provider.stdout.readline(), STEP_S) == b"registered\n"
        async with open_registry(zk_url) as observer, watching(observer, service) as watch:
            await watch_until(watch, only_the_provider)
            yield provider, watch
    finally:
        if provider.returncode is None:
            os.kill(provider.pid, signal.SIGKILL)
        await provider.wait()


async def test_node_of_a_killed_process_expires(zk_url: str, service: str) -> None:
    """The node of a process killed with SIGKILL goes when its session expires, within the
    session timeout; watchers see it go."""
    async with watched_provider(zk_url, service) as (provider, watch):
        os.kill(provider.pid, signal.SIGKILL)
        started = asyncio.get_running_loop().time()
        await watch_until(watch, lambda instances: instances == [], bound_s=SHORT_TTL_S + STEP_S)
        # The server expires a session between 1 and 1.5 timeouts after its last ping.
        assert asyncio.get_running_loop().time() - started < SHORT_TTL_S * 2 + 1


async def test_new_session_publishes_again(zk_url: str, service: str) -> None:
    """A process frozen past its session timeout (a long pause, a partition) loses its session
    and its node; once it runs again, it publishes the node again in a new session."""
    async with watched_provider(zk_url, service) as (provider, watch):
        os.kill(provider.pid, signal.SIGSTOP)
        await watch_until(watch, lambda instances: instances == [], bound_s=SHORT_TTL_S + STEP_S)
        os.kill(provider.pid, signal.SIGCONT)
        await watch_until(watch, only_the_provider)


async def test_change_missed_while_down_is_published(
    fresh_zookeeper: ZooKeeperServer, make: Callable[..., Instance]
) -> None:
    """A weight change that failed while the server was down is published once it is back,
    also when the session survived (the server kept its data)."""
    async with open_registry(fresh_zookeeper.url) as registry:
        await registry.register(make())
        await asyncio.to_thread(fresh_zookeeper.stop)
        with pytest.raises(RegistryUnavailable):
            await registry.set_weight(make().instance_id, 25)
        await asyncio.to_thread(fresh_zookeeper.start)
        await contract.until_watched(registry, make().service, [make().with_weight(25)])


async def test_first_connection_to_a_down_server_fails_fast(
    fresh_zookeeper: ZooKeeperServer, make: Callable[..., Instance]
) -> None:
    """A registry whose server is down when it first connects fails fast with RegistryUnavailable
    (the contract suite covers a server that goes down later)."""
    await asyncio.to_thread(fresh_zookeeper.stop)
    fresh = ZooKeeperRegistry.from_url(urlsplit(fresh_zookeeper.url), call_timeout=1.0)
    async with fresh, asyncio.timeout(FAST_FAILURE_S):
        with pytest.raises(RegistryUnavailable):
            await fresh.register(make(3))


# -- the contract's generic tests, on the Dubbo layout ---------------------------------------------


@pytest.fixture
def registry_url(zookeeper_server: ZooKeeperServer) -> str:
    return f"{zookeeper_server.url}?layout=dubbo"


@pytest.fixture
async def registry(registry_url: str) -> AsyncIterator[Registry]:
    async with open_registry(registry_url) as registry:
        yield registry


test_dubbo_register_then_watch_sees_it = contract.test_register_then_watch_sees_it
test_dubbo_watch_yields_at_once_then_on_change = contract.test_watch_yields_at_once_then_on_change
test_dubbo_set_weight_is_watched = contract.test_set_weight_is_watched
test_dubbo_weight_zero_leaves_the_watch_and_comes_back = (
    contract.test_weight_zero_leaves_the_watch_and_comes_back
)
test_dubbo_set_offline_leaves_the_watch = contract.test_set_offline_leaves_the_watch
test_dubbo_weight_change_keeps_offline_out = contract.test_weight_change_keeps_offline_out
test_dubbo_deregister_leaves_the_watch = contract.test_deregister_leaves_the_watch
test_dubbo_register_again_replaces_metadata = contract.test_register_again_replaces_metadata
test_dubbo_unknown_instances = contract.test_unknown_instances
test_dubbo_services_are_kept_apart = contract.test_services_are_kept_apart
test_dubbo_closed_without_deregister_expires = contract.test_closed_without_deregister_expires


async def test_watch_sees_a_service_created_between_its_two_reads(
    zookeeper_server: ZooKeeperServer, make: Callable[..., Instance], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watch that found no service node, then finds it created just before it asks to be told
    of its creation (the first provider registering at that moment), reads its instances at once
    instead of waiting for a change that never comes."""
    instance = make()
    layout = CuratorLayout()
    parent = layout.parent(instance.service)
    node = layout.node(instance, registered_ms=int(time.time() * 1000))
    real_exists = KazooClient.exists_async
    writer = raw_client(zookeeper_server)

    raced: list[str] = []

    def exists_after_a_registration(client: KazooClient, path: str, watch: object = None) -> object:
        if path == parent and client is not writer and not raced:  # the race, made to happen
            raced.append(path)
            writer.create(f"{parent}/{node.name}", node.data, makepath=True)
        return real_exists(client, path, watch)

    monkeypatch.setattr(KazooClient, "exists_async", exists_after_a_registration)
    try:
        async with (
            open_registry(zookeeper_server.url) as registry,
            watching(registry, instance.service) as watch,
        ):
            found = await watch_until(watch, lambda instances: bool(instances))
    finally:
        writer.delete(parent, recursive=True)
        writer.stop()
        writer.close()
    assert raced == [parent]
    assert [i.instance_id for i in found] == [instance.instance_id]
