"""etcd keys and values in go-kratos's published registry layout, checked against a real etcd.

The layout, from go-kratos/kratos (read at commit 668db92c2c001e9552594ba5a8aede8456af6d7e):
- `contrib/registry/etcd/registry.go`: `registerKey` is `fmt.Sprintf("%s/%s/%s", namespace,
  service.Name, service.ID)` with the default namespace `/microservices`; the value is bound to a
  lease (`clientv3.WithLease`) that `heartBeat` keeps alive; `GetService` and the watcher read the
  prefix `namespace/name` and keep the values whose `Name` is the service.
- `contrib/registry/etcd/service.go`: the value is `json.Marshal(*registry.ServiceInstance)`.
- `registry/registry.go`: `ServiceInstance` is `{"id", "name", "version", "metadata"
  (map[string]string), "endpoints" ([]string such as "http://127.0.0.1:8000?isSecure=false")}`.
- `selector/default_node.go`: a node's weight is `strconv.ParseInt(Metadata["weight"])`, none
  when absent or not a number.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from registry_adapters import Instance
from registry_adapters.base import open_registry
from sidecar.protocol.metadata import META_ADMIN, META_WEIGHT
from tests.support import etcd_gateway as gateway
from tests.support.etcd_server import EtcdServer
from tests.support.procs import demo_app, sidecar, wait_for
from tests.support.registry_view import etcd_values
from tests.test_registry_contract import watch_until, watching

pytestmark = pytest.mark.etcd

# What a kratos service's `Register` puts, byte for byte: Go's encoding/json writes the struct's
# fields in declaration order and a map's keys sorted.
KRATOS_VALUE = (
    '{"id":"{id}","name":"{name}","version":"v1.2.0",'
    '"metadata":{"weight":"10","zone":"eu-1"},'
    '"endpoints":["http://127.0.0.1:8000?isSecure=false","grpc://127.0.0.1:9000?isSecure=false"]}'
)


def kratos_value(name: str, instance_id: str) -> str:
    return KRATOS_VALUE.replace("{id}", instance_id).replace("{name}", name)


@pytest.fixture
def service() -> str:
    return f"layout-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make(service: str) -> Callable[..., Instance]:
    def make(n: int = 1, *, weight: int = 100) -> Instance:
        meta = {META_WEIGHT: str(weight), META_ADMIN: f"http://10.0.0.{n}:16688"}
        return Instance(service, f"{service}-{n}", f"10.0.0.{n}", 8080 + n, weight, meta)

    return make


async def test_published_value_is_a_kratos_service_instance(
    etcd_server: EtcdServer, make: Callable[..., Instance]
) -> None:
    """A registered instance is one key `/microservices/NAME/ID`, bound to a lease, whose value is
    a kratos ServiceInstance with an http endpoint and the weight in its metadata."""
    instance = make(weight=70)
    async with open_registry(etcd_server.url) as registry:
        await registry.register(instance)
        kv = gateway.get(etcd_server, f"/microservices/{instance.service}/{instance.instance_id}")
        assert kv is not None
        value = json.loads(kv["value"])
        assert list(value) == ["id", "name", "version", "metadata", "endpoints"]
        assert value == {
            "id": instance.instance_id,
            "name": instance.service,
            "version": "",
            "metadata": {**instance.meta, "weight": "70"},
            "endpoints": ["http://10.0.0.1:8081", "grpc://10.0.0.1:8081"],
        }
        assert gateway.lease_ttl(etcd_server, kv["lease"]) > 0
        await registry.deregister(instance.instance_id)


async def test_kratos_instance_is_watched(etcd_server: EtcdServer, service: str) -> None:
    """A value a kratos service wrote is watched with its http endpoint, its metadata weight and
    the rest of its metadata; a kratos value without a weight gets the default weight."""
    gateway.put(etcd_server, f"/microservices/{service}/k1", kratos_value(service, "k1"))
    without_weight = json.loads(kratos_value(service, "k2"))
    del without_weight["metadata"]["weight"]
    gateway.put(etcd_server, f"/microservices/{service}/k2", json.dumps(without_weight))
    async with open_registry(etcd_server.url) as registry, watching(registry, service) as watch:
        seen = await watch_until(watch, lambda instances: len(instances) == 2)
    meta = {"zone": "eu-1"}
    assert seen == [
        Instance(service, "k1", "127.0.0.1", 8000, 10, meta),
        Instance(service, "k2", "127.0.0.1", 8000, 100, meta),
    ]


async def test_weight_offline_and_deregister_in_the_layout(
    etcd_server: EtcdServer, make: Callable[..., Instance]
) -> None:
    """What a kratos reader sees: a weight change in the metadata, the key gone at once when set
    offline, and the lease revoked when deregistered."""
    instance = make()
    key = f"/microservices/{instance.service}/{instance.instance_id}"
    async with open_registry(etcd_server.url) as registry:
        await registry.register(instance)
        lease = gateway.get(etcd_server, key)["lease"]  # type: ignore[index]
        await registry.set_weight(instance.instance_id, 25)
        assert gateway.get_json(etcd_server, key)["metadata"]["weight"] == "25"
        await registry.set_offline(instance.instance_id)
        assert gateway.get(etcd_server, key) is None
        assert gateway.lease_ttl(etcd_server, lease) > 0  # kept alive until deregistered
        await registry.deregister(instance.instance_id)
        assert gateway.lease_ttl(etcd_server, lease) == -1


async def test_prefix_option_moves_the_keys(etcd_server: EtcdServer, make: Callable[..., Instance]) -> None:
    """`?prefix=` is kratos's namespace: keys go under it, and watch reads under it."""
    instance = make()
    url = f"{etcd_server.url}?prefix=/kratos/prod"
    async with open_registry(url) as registry, watching(registry, instance.service) as watch:
        await registry.register(instance)
        await watch_until(watch, lambda instances: instances == [instance])
        assert gateway.get_json(etcd_server, f"/kratos/prod/{instance.service}/{instance.instance_id}")
        assert gateway.get(etcd_server, f"/microservices/{instance.service}/{instance.instance_id}") is None


async def test_values_that_are_no_instance_are_skipped(
    etcd_server: EtcdServer, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Values that are not JSON, name another service, or have no http endpoint are logged and
    left out; the good one is watched."""
    prefix = f"/microservices/{service}"
    grpc_only = json.loads(kratos_value(service, "grpc"))
    grpc_only["endpoints"] = ["grpc://127.0.0.1:9000"]
    gateway.put(etcd_server, f"{prefix}/junk", "not json")
    gateway.put(etcd_server, f"{prefix}/other", kratos_value(f"{service}-other", "other"))
    gateway.put(etcd_server, f"{prefix}/grpc", json.dumps(grpc_only))
    gateway.put(etcd_server, f"{prefix}/good", kratos_value(service, "good"))
    with caplog.at_level(logging.WARNING, logger="registry_adapters.kratos_layout"):
        async with open_registry(etcd_server.url) as registry, watching(registry, service) as watch:
            seen = await watch_until(watch, lambda instances: len(instances) >= 1)
    assert [i.instance_id for i in seen] == ["good"]
    assert sum("no kratos instance" in r.getMessage() for r in caplog.records) == 3


def test_reader_without_sidecar_sees_warmup_and_departure(tmp_path: Path, etcd_server: EtcdServer) -> None:
    """Of a real sidecar, a kratos reader sees its key with `metadata.weight` rising in steps
    during warmup up to the full weight, and no key any more once /shutdown has answered."""
    service = f"reader-{uuid.uuid4().hex[:8]}"
    weights: list[int] = []

    def at_full_weight() -> bool:
        for value in etcd_values(etcd_server.url, service):
            weight = int(value["metadata"]["weight"])
            if not weights or weights[-1] != weight:
                weights.append(weight)
        return weights[-1:] == [100]

    args = ("--warmup", "4", "--quiet-period", "0.2")
    with demo_app(tmp_path) as app, sidecar(tmp_path, etcd_server.url, app, *args, service=service) as car:
        wait_for(at_full_weight, 20, "the full weight in etcd")
        assert len(weights) >= 3, weights  # 10, 25, 56, 100 at --warmup 4 and the default curve
        assert weights == sorted(weights)
        [value] = etcd_values(etcd_server.url, service)
        assert value["endpoints"] == [
            f"http://127.0.0.1:{car.listen_port}",
            f"grpc://127.0.0.1:{car.listen_port}",
        ]
        answer = httpx.get(f"{car.admin}/shutdown", timeout=30, verify=False)
        assert answer.json()["deregistered"] is True
        assert etcd_values(etcd_server.url, service) == []
