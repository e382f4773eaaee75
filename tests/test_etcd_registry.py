"""etcd's own behaviours, on real etcd members: leases that expire or are lost, outages, several
endpoints, and a watch that resumes its stream. The shared contract is in test_registry_contract."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from registry_adapters import Instance, RegistryUnavailable
from registry_adapters.base import open_registry
from registry_adapters.etcd import EtcdRegistry
from sidecar.protocol.metadata import META_ADMIN, META_WEIGHT
from tests.support import etcd_gateway as gateway
from tests.support.etcd_server import EtcdServer
from tests.support.ports import free_port
from tests.support.procs import await_for, demo_app, sidecar
from tests.support.registry_view import etcd_values
from tests.test_registry_contract import (
    SHORT_TTL_S,
    STEP_S,
    next_list,
    until_watched,
    watch_until,
    watching,
)

pytestmark = pytest.mark.etcd


@pytest.fixture
def make() -> Callable[..., Instance]:
    service = f"etcd-{uuid.uuid4().hex[:8]}"

    def make(n: int = 1, *, weight: int = 100) -> Instance:
        meta = {META_WEIGHT: str(weight), META_ADMIN: f"http://10.0.0.{n}:16688"}
        return Instance(service, f"{service}-{n}", f"10.0.0.{n}", 8080 + n, weight, meta)

    return make


def tuned(url: str, **options: float) -> EtcdRegistry:
    """An adapter with a short lease (etcd's minimum TTL is 2 s at its default timings)."""
    return EtcdRegistry.from_url(urlsplit(url), ttl=SHORT_TTL_S, beat_interval=0.3, **options)


def test_killed_sidecar_expires_with_its_lease(tmp_path: Path, etcd_server: EtcdServer) -> None:
    """A sidecar killed with SIGKILL stops renewing its lease: its key is gone within the TTL."""
    url = f"{etcd_server.url}?ttl=2"
    service = f"killed-{uuid.uuid4().hex[:8]}"
    with demo_app(tmp_path) as app, sidecar(tmp_path, url, app, service=service) as car:
        [value] = etcd_values(url, service)
        assert value["metadata"]["weight"] == "100"
        car.signal(signal.SIGKILL)
        car.proc.wait(STEP_S)

        async def gone() -> None:
            async with open_registry(url) as observer, watching(observer, service) as watch:
                await watch_until(watch, lambda instances: instances == [], bound_s=2 + STEP_S)

        asyncio.run(gone())
    assert etcd_values(url, service) == []


async def test_lost_lease_is_granted_again(etcd_server: EtcdServer, make: Callable[..., Instance]) -> None:
    """When the lease is revoked behind the adapter's back (the key goes with it), the renewal
    grants a new lease and puts the key again; an instance at weight 0 stays out."""
    async with tuned(etcd_server.url) as registry:
        await registry.register(make(1))
        await registry.register(make(2))
        await registry.set_weight(make(2).instance_id, 0)
        key = f"/microservices/{make(1).service}/{make(1).instance_id}"
        lease = gateway.get(etcd_server, key)["lease"]  # type: ignore[index]
        gateway.revoke(etcd_server, lease)
        kv = await await_for(
            lambda: (kv := gateway.get(etcd_server, key)) and kv["lease"] != lease and kv,
            STEP_S,
            "a new lease",
        )
        assert gateway.lease_ttl(etcd_server, kv["lease"]) > 0
        async with watching(registry, make().service) as watch:
            assert await next_list(watch) == [make(1)]


async def test_deleted_key_is_put_again(etcd_server: EtcdServer, make: Callable[..., Instance]) -> None:
    """A key deleted behind the adapter's back while its lease lives is put again by the renewal."""
    async with tuned(etcd_server.url) as registry:
        await registry.register(make())
        key = f"/microservices/{make().service}/{make().instance_id}"
        put_at = gateway.get(etcd_server, key)["mod_revision"]  # type: ignore[index]
        gateway.call(etcd_server, "/v3/kv/deleterange", {"key": gateway.b64(key)})
        await await_for(
            lambda: (kv := gateway.get(etcd_server, key)) and kv["mod_revision"] != put_at, STEP_S, "the key"
        )
        async with watching(registry, make().service) as watch:
            assert await next_list(watch) == [make()]


async def test_wiped_etcd_gets_the_instances_again(
    fresh_etcd: EtcdServer, make: Callable[..., Instance], caplog: pytest.LogCaptureFixture
) -> None:
    """After the member comes back without its data (every lease unknown), the renewal grants new
    leases and puts the keys again; an instance set offline stays out."""
    async with tuned(fresh_etcd.url) as registry:
        await registry.register(make(1))
        await registry.register(make(2))
        await registry.set_offline(make(2).instance_id)
        await asyncio.to_thread(fresh_etcd.stop)
        await asyncio.to_thread(fresh_etcd.start, wipe=True)
        await until_watched(registry, make().service, [make(1)])
        assert gateway.get(fresh_etcd, f"/microservices/{make(2).service}/{make(2).instance_id}") is None
    assert any(
        make(1).instance_id in r.getMessage() and "lost the lease" in r.getMessage() for r in caplog.records
    )


async def test_missed_change_is_put_by_the_renewal(
    fresh_etcd: EtcdServer, make: Callable[..., Instance]
) -> None:
    """A weight change that failed while the member was down is put once it is back, also when
    it kept its data (and so the old value and the lease)."""
    async with tuned(fresh_etcd.url) as registry:
        await registry.register(make())
        await asyncio.to_thread(fresh_etcd.stop)
        with pytest.raises(RegistryUnavailable):
            await registry.set_weight(make().instance_id, 25)
        await asyncio.to_thread(fresh_etcd.start)
        await until_watched(registry, make().service, [make().with_weight(25)])


async def test_second_endpoint_serves_when_the_first_refuses(
    etcd_server: EtcdServer, make: Callable[..., Instance]
) -> None:
    """With a host list whose first endpoint refuses connections, every call and the watch go to
    the next one."""
    url = f"etcd://127.0.0.1:{free_port()},127.0.0.1:{etcd_server.client_port}"
    async with open_registry(url) as registry, watching(registry, make().service) as watch:
        assert await next_list(watch) == []
        await registry.register(make())
        assert await next_list(watch) == [make()]
        await registry.set_offline(make().instance_id)
        assert await next_list(watch) == []
        await registry.deregister(make().instance_id)


async def test_watch_has_no_gap_after_its_first_read(
    etcd_server: EtcdServer, make: Callable[..., Instance]
) -> None:
    """A change made between the watch's first read and its stream is still seen: the stream
    starts at the revision after the read."""
    async with open_registry(etcd_server.url) as registry, watching(registry, make().service) as watch:
        await registry.register(make(1))
        assert await next_list(watch) == [make(1)]  # the read; the stream starts on the next anext
        await registry.register(make(2))
        assert await next_list(watch) == [make(1), make(2)]


async def test_idle_stream_resumes_without_repeating(
    etcd_server: EtcdServer, make: Callable[..., Instance]
) -> None:
    """A watch stream that stays silent past its idle limit is resumed from its revision: nothing
    is yielded again, and a later change is seen."""
    async with (
        tuned(etcd_server.url, watch_idle=0.2) as registry,
        watching(registry, make().service) as watch,
    ):
        await registry.register(make(1))
        assert await next_list(watch) == [make(1)]
        waiting = asyncio.ensure_future(anext(watch))
        done, _ = await asyncio.wait([waiting], timeout=1.5)  # several resumptions meanwhile
        assert not done, waiting.result()  # nothing yielded again
        await registry.register(make(2))
        assert await asyncio.wait_for(waiting, STEP_S) == [make(1), make(2)]
