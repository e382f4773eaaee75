"""The registry contract, run against every backend with a real server (`registry_url`).

Changes are observed through `watch`, whose next list is awaited with a bound; nothing sleeps to
let a change happen. Consul's timings are the agent's: a change reaches a blocking query within
milliseconds, a TTL check turns critical when its TTL passes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import uuid
from asyncio.subprocess import PIPE
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing, closing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from registry_adapters import (
    Instance,
    Registry,
    RegistryClosed,
    RegistryError,
    RegistryRejected,
    RegistryUnavailable,
    RegistryURLError,
)
from registry_adapters.base import open_registry
from registry_adapters.consul import ConsulRegistry
from registry_adapters.etcd import EtcdRegistry
from registry_adapters.eureka import EurekaRegistry
from registry_adapters.nacos import NacosRegistry
from registry_adapters.sqlite import SQLiteRegistry
from registry_adapters.zookeeper import ZooKeeperRegistry
from sidecar.options import INSTANCE_ID_PUNCTUATION, MAX_INSTANCE_ID, MAX_SERVICE_NAME
from sidecar.protocol.metadata import META_ADMIN, META_PROTOCOLS, META_WEIGHT, META_WEIGHT_OVERRIDE, PROTOCOLS
from tests.support.consul_agent import REPO_ROOT, ConsulAgent
from tests.support.procs import await_for
from tests.support.registry_server import RegistryServer, live_registry_url
from tests.support.registry_view import registered_ids, zookeeper_nodes

# Bound on one awaited change; a change normally shows in well under a second.
STEP_S = 10.0
# Short keep-alive settings, so that expiry and its prevention can be watched in seconds.
SHORT_TTL_S = 2.0
SHORT_BEAT_S = 0.4
# A stopped agent refuses connections: every call should fail at once, far below its timeouts.
FAST_FAILURE_S = 3.0


def open_tuned(url: str, **options: Any) -> Registry:
    """The backend of `url`, with constructor options (short TTLs) that URLs do not carry."""
    parts = urlsplit(url)
    backends: dict[
        str,
        type[
            SQLiteRegistry
            | ConsulRegistry
            | EtcdRegistry
            | ZooKeeperRegistry
            | EurekaRegistry
            | NacosRegistry
        ],
    ] = {
        "sqlite": SQLiteRegistry,
        "consul": ConsulRegistry,
        "etcd": EtcdRegistry,
        "zookeeper": ZooKeeperRegistry,  # ttl: the session timeout
        "eureka": EurekaRegistry,  # ttl: the lease duration
        "nacos": NacosRegistry,  # ttl: the heartbeat timeout
    }
    backend = backends[parts.scheme]
    registry: Registry = backend.from_url(parts, **options)
    return registry


def watching(registry: Registry, service: str) -> aclosing[AsyncGenerator[list[Instance], None]]:
    """`registry.watch(service)`, closed on exit (every backend's watch is an async generator)."""
    return aclosing(registry.watch(service))


async def next_list(watch: AsyncIterator[list[Instance]], bound_s: float = STEP_S) -> list[Instance]:
    return await asyncio.wait_for(anext(watch), bound_s)


async def watch_until(
    watch: AsyncIterator[list[Instance]],
    wanted: Callable[[list[Instance]], bool],
    bound_s: float = STEP_S,
) -> list[Instance]:
    """The first list from `watch` that is `wanted`; fails after `bound_s`."""
    seen: list[list[Instance]] = []
    try:
        async with asyncio.timeout(bound_s):
            async for instances in watch:
                seen.append(instances)
                if wanted(instances):
                    return instances
    except TimeoutError:
        pass
    raise AssertionError(f"no wanted list within {bound_s} s; saw {seen}")


@pytest.fixture
def service() -> str:
    return f"svc-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make(service: str) -> Callable[..., Instance]:
    """Instances of `service` with ids unique to this test (one Consul agent serves them all)."""

    def make(n: int = 1, *, of: str = service, weight: int = 100, port: int = 8080) -> Instance:
        # Every key a provider sidecar publishes that its consumers read back, `/` and `,` included.
        meta = {META_WEIGHT: str(weight), META_ADMIN: f"http://10.0.0.{n}:16688", META_PROTOCOLS: PROTOCOLS}
        return Instance(of, f"{of}-{n}", f"10.0.0.{n}", port + n, weight, meta)

    return make


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("consul", marks=pytest.mark.consul),
        pytest.param("etcd", marks=pytest.mark.etcd),
        pytest.param("zookeeper", marks=pytest.mark.zookeeper),
        pytest.param("eureka", marks=pytest.mark.eureka),
        pytest.param("nacos", marks=pytest.mark.nacos),
    ]
)
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """conftest's `registry_url`, and Nacos: here only, so that the contract runs on a real
    Nacos server without every other registry test paying for one."""
    return live_registry_url(request, request.param, tmp_path)


@pytest.fixture
async def registry(registry_url: str) -> AsyncIterator[Registry]:
    async with open_registry(registry_url) as registry:
        yield registry


async def test_register_then_watch_sees_it(
    registry: Registry, service: str, make: Callable[..., Instance]
) -> None:
    """A registered instance is watched with its host, port, weight and metadata."""
    instance = make(weight=70)
    await registry.register(instance)
    async with watching(registry, service) as watch:
        [seen] = await watch_until(watch, lambda instances: len(instances) == 1)
    assert seen == instance
    assert (seen.host, seen.port, seen.weight, dict(seen.meta)) == ("10.0.0.1", 8081, 70, dict(instance.meta))


async def test_watch_yields_at_once_then_on_change(
    registry: Registry, service: str, make: Callable[..., Instance]
) -> None:
    """watch yields the current list at once, then a new list when something changes."""
    async with watching(registry, service) as watch:
        assert await next_list(watch) == []
        await registry.register(make())
        assert await next_list(watch) == [make()]


async def test_set_weight_is_watched(registry: Registry, service: str, make: Callable[..., Instance]) -> None:
    """set_weight changes the weight consumers see."""
    await registry.register(make())
    async with watching(registry, service) as watch:
        await watch_until(watch, lambda instances: instances == [make()])
        await registry.set_weight(make().instance_id, 40)
        await watch_until(watch, lambda instances: instances == [make().with_weight(40)])


async def test_weight_zero_leaves_the_watch_and_comes_back(
    registry: Registry, service: str, make: Callable[..., Instance]
) -> None:
    """Weight 0 takes the instance out of the watch; a weight > 0 brings it back."""
    await registry.register(make())
    async with watching(registry, service) as watch:
        await watch_until(watch, lambda instances: instances == [make()])
        await registry.set_weight(make().instance_id, 0)
        await watch_until(watch, lambda instances: instances == [])
        await registry.set_weight(make().instance_id, 30)
        await watch_until(watch, lambda instances: instances == [make().with_weight(30)])


async def test_set_offline_leaves_the_watch(
    registry: Registry, service: str, make: Callable[..., Instance]
) -> None:
    """set_offline takes the instance out of the watch at once."""
    await registry.register(make())
    async with watching(registry, service) as watch:
        await watch_until(watch, lambda instances: instances == [make()])
        await registry.set_offline(make().instance_id)
        await watch_until(watch, lambda instances: instances == [])


async def test_weight_change_keeps_offline_out(
    registry: Registry, service: str, make: Callable[..., Instance]
) -> None:
    """A weight change after set_offline does not bring the instance back."""
    await registry.register(make(1))
    await registry.set_offline(make(1).instance_id)
    await registry.set_weight(make(1).instance_id, 50)
    # Registered after the weight change: once it shows, the weight change has been applied too.
    await registry.register(make(2))
    async with watching(registry, service) as watch:
        await watch_until(watch, lambda instances: instances == [make(2)])


async def test_deregister_leaves_the_watch(
    registry: Registry, service: str, make: Callable[..., Instance]
) -> None:
    """deregister removes the instance."""
    await registry.register(make())
    async with watching(registry, service) as watch:
        await watch_until(watch, lambda instances: instances == [make()])
        await registry.deregister(make().instance_id)
        await watch_until(watch, lambda instances: instances == [])


async def test_register_again_replaces_metadata(
    registry: Registry, service: str, make: Callable[..., Instance]
) -> None:
    """Registering an instance id again, with other metadata and weight (as the provider does
    when a weight override comes or goes), replaces them: a watcher sees the new keys and
    values and none of the old keys."""
    await registry.register(make(weight=70))
    meta = {META_WEIGHT: "30", META_WEIGHT_OVERRIDE: "30"}  # no META_ADMIN any more
    again = Instance(service, make().instance_id, make().host, make().port, 30, meta)
    async with watching(registry, service) as watch:
        await watch_until(watch, lambda instances: instances == [make(weight=70)])
        await registry.register(again)
        [seen] = await watch_until(watch, lambda instances: [i.weight for i in instances] == [30])
    assert dict(seen.meta) == meta
    assert seen == again


async def test_unknown_instances(registry: Registry, service: str) -> None:
    """deregister and set_offline of an unknown id are no error; set_weight of one is rejected."""
    await registry.deregister(f"{service}-nobody")
    await registry.set_offline(f"{service}-nobody")
    with pytest.raises(RegistryRejected):
        await registry.set_weight(f"{service}-nobody", 10)


async def test_services_are_kept_apart(
    registry: Registry, service: str, make: Callable[..., Instance]
) -> None:
    """Each watch sees the instances of its own service only, sorted by id."""
    other = f"{service}-other"
    for instance in (make(2), make(1), make(1, of=other)):
        await registry.register(instance)
    async with watching(registry, service) as watch:
        await watch_until(watch, lambda instances: instances == [make(1), make(2)])
    async with watching(registry, other) as watch:
        await watch_until(watch, lambda instances: instances == [make(1, of=other)])


async def test_services_lists_the_services_with_instances(layout_url: str, service: str) -> None:
    """services() lists, sorted, every service that has an instance, and no longer one whose
    instances were all deregistered (in every layout; Consul's catalog follows its agent)."""
    other = f"{service}-other"
    mine = [Instance(of, f"{of}-{n}", f"10.0.0.{n}", 8080 + n) for of in (service, other) for n in (1, 2)]
    async with open_registry(layout_url) as registry:
        for instance in mine:
            await registry.register(instance)

        async def listed(wanted: Callable[[list[str]], bool]) -> bool:
            names = await registry.services()
            assert names == sorted(names)
            return wanted(names)

        await await_for(lambda: listed(lambda names: {service, other} <= set(names)), STEP_S, "both listed")
        if layout_url.startswith("sqlite:"):  # a registry of this test's own: nothing else in it
            assert await registry.services() == [service, other]
        for instance in mine[:2]:
            await registry.deregister(instance.instance_id)
        await await_for(lambda: listed(lambda names: service not in names), STEP_S, f"{service} gone")
        assert other in await registry.services()


# -- names: what an id and a service name may hold (sidecar.options) reads back in every layout --

# Where a layout broke or could: `&` and `=` split a query, `%` and `+` are decoded (`%25` is
# `%`, `+` a space), `:` ends a host; letters of other scripts, one of them with a combining mark,
# go out as UTF-8; and all the punctuation an id may hold at once.
ODD_IDS = ("a&b=c", "100%25%of", "h:8080+1", "zoë-東京-n\u0303", INSTANCE_ID_PUNCTUATION)
# The longest id allowed, of characters that grow the most when encoded: `名` is %E5%90%8D in a
# URL, and %25E5%2590%258D once Dubbo's provider URL is encoded again as a node name.
LONGEST_ID_FILL = "é&%=:+名"
# Nacos refuses a service name with a CJK character after its first one (its ParamChecker's
# `^(?!@).((?!@@)[^\u4E00-\u9FA5\s])*$`): its names are filled with another letter that UTF-8
# takes two bytes for. Only that case is left out; the ids keep theirs (Nacos holds them in the
# metadata).
NACOS_NAME_FILL = "ø"


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("consul", marks=pytest.mark.consul),
        pytest.param("etcd", marks=pytest.mark.etcd),  # go-kratos's layout, the only one
        pytest.param("zookeeper-curator", marks=pytest.mark.zookeeper),
        pytest.param("zookeeper-dubbo", marks=pytest.mark.zookeeper),
        pytest.param("eureka", marks=pytest.mark.eureka),
        pytest.param("nacos", marks=pytest.mark.nacos),
    ]
)
def layout_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a live registry for each layout a backend publishes in (ZooKeeper has two)."""
    kind, _, layout = request.param.partition("-")
    if kind == "zookeeper":
        return f"{request.getfixturevalue('zookeeper_server').url}?layout={layout}"
    if kind in ("consul", "etcd", "eureka", "nacos"):
        server: RegistryServer = request.getfixturevalue(
            f"{kind}_agent" if kind == "consul" else f"{kind}_server"
        )
        return server.url
    return f"sqlite://{tmp_path / 'registry.db'}"


async def test_odd_ids_and_names_read_back_as_themselves(layout_url: str, service: str) -> None:
    """Ids with `&`, `%`, `=`, `:`, `+`, letters of other scripts and every punctuation mark an id
    may hold, the longest id allowed and the longest service name, read back as themselves in
    every layout: a weight change keeps one entry per id, set_offline and deregister leave none."""
    unique = service.removeprefix("svc-")  # one Consul agent serves every test: ids stay apart
    fill = NACOS_NAME_FILL if layout_url.startswith("nacos:") else "名"
    name = (f"{service}.Ünï_cødé$" + fill * MAX_SERVICE_NAME)[:MAX_SERVICE_NAME]
    ids = [f"{unique}{odd}" for odd in ODD_IDS]
    ids.append((unique + LONGEST_ID_FILL * MAX_INSTANCE_ID)[:MAX_INSTANCE_ID])
    instances = sorted(
        (
            Instance(
                name, instance_id, f"10.0.0.{n}", 8080 + n, 100, {META_ADMIN: f"http://10.0.0.{n}:16688"}
            )
            for n, instance_id in enumerate(ids, 1)
        ),
        key=lambda instance: instance.instance_id,
    )
    reweighted = [instance.with_weight(40) for instance in instances]
    async with open_registry(layout_url) as registry, watching(registry, name) as watch:
        for instance in instances:
            await registry.register(instance)
        await watch_until(watch, lambda seen: seen == instances)
        for instance in instances:
            await registry.set_weight(instance.instance_id, 40)
        await watch_until(watch, lambda seen: seen == reweighted)
        await await_for(lambda: has_service(registry, name), STEP_S, "the odd name listed by services()")
        # As others read the registry: each id as itself, and (ZooKeeper) no node left beside it.
        assert await asyncio.to_thread(registered_ids, layout_url, name) == set(ids)
        if layout_url.startswith("zookeeper:"):
            assert len(await asyncio.to_thread(zookeeper_nodes, layout_url, name)) == len(ids)
        for instance in instances[::2]:
            await registry.set_offline(instance.instance_id)
        await watch_until(watch, lambda seen: seen == reweighted[1::2])
        for instance in instances:
            await registry.deregister(instance.instance_id)
        await watch_until(watch, lambda seen: seen == [])

    async def none_left() -> bool:
        return not await asyncio.to_thread(registered_ids, layout_url, name)

    await await_for(none_left, STEP_S, "every id deregistered")


async def has_service(registry: Registry, name: str) -> bool:
    return name in await registry.services()


async def test_beat_keeps_instance_alive_past_its_ttl(
    registry_url: str, service: str, make: Callable[..., Instance]
) -> None:
    """A registered instance outlives its TTL many times over: the beat keeps it alive."""
    async with open_tuned(registry_url, ttl=SHORT_TTL_S, beat_interval=SHORT_BEAT_S) as registry:
        await registry.register(make())
        async with watching(registry, service) as watch:
            await watch_until(watch, lambda instances: instances == [make()])
            with pytest.raises(TimeoutError):  # no change at all
                await next_list(watch, bound_s=SHORT_TTL_S * 2.5)
        async with watching(registry, service) as watch:
            assert await next_list(watch) == [make()]


async def test_closed_without_deregister_expires(
    registry_url: str, service: str, make: Callable[..., Instance]
) -> None:
    """After close() without deregister (a crash, in effect) the instance expires by itself."""
    async with open_registry(registry_url) as observer, watching(observer, service) as watch:
        registry = open_tuned(registry_url, ttl=SHORT_TTL_S, beat_interval=SHORT_BEAT_S)
        await registry.register(make())
        await watch_until(watch, lambda instances: instances == [make()])
        await registry.close()
        await watch_until(watch, lambda instances: instances == [], bound_s=SHORT_TTL_S + STEP_S)


async def test_closed_registry_refuses_every_call(
    registry_url: str, service: str, make: Callable[..., Instance]
) -> None:
    """After close(), register, set_weight, set_offline, deregister, watch and services raise
    RegistryClosed (a RegistryError), for a registered instance as for an unknown one."""
    registry = open_registry(registry_url)
    await registry.register(make(1))
    await registry.close()
    with pytest.raises(RegistryClosed) as refused:
        await registry.register(make(2))
    assert isinstance(refused.value, RegistryError)
    for instance_id in (make(1).instance_id, f"{service}-nobody"):
        with pytest.raises(RegistryClosed):
            await registry.set_weight(instance_id, 10)
        with pytest.raises(RegistryClosed):
            await registry.set_offline(instance_id)
        with pytest.raises(RegistryClosed):
            await registry.deregister(instance_id)
    with pytest.raises(RegistryClosed):
        await anext(registry.watch(service))
    with pytest.raises(RegistryClosed):
        await registry.services()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("consol://127.0.0.1:8500", "did you mean consul://"),
        ("sqlite://", "absolute file path"),
        ("sqlite://relative.db", "absolute file path"),
        ("consul://127.0.0.1:notaport", "bad port"),
        ("consul://127.0.0.1:99999", "bad port"),
        ("consul://127.0.0.1:8500?tokn=x", "unknown parameter"),
        ("etcd://127.0.0.1:2379,:2379", "bad host or port ':2379'"),
        ("etcd://127.0.0.1:2379,127.0.0.2:x", "bad host or port '127.0.0.2:x'"),
        ("etcd://127.0.0.1:2379/some/path", "expected etcd://HOST"),
        ("etcd://127.0.0.1:2379?ttl=0.5", "ttl must be whole seconds"),
        ("etcd://127.0.0.1:2379?prefix=relative", "prefix must be a path"),
        ("etcd://127.0.0.1:2379?prefx=/a", "unknown parameter"),
        ("etc://127.0.0.1:2379", "did you mean etcd://"),
        ("zookeper://127.0.0.1:2181", "did you mean zookeeper://"),
        ("zookeeper://127.0.0.1:2181,,127.0.0.2", "bad host '' in the host list"),
        ("zookeeper://127.0.0.1:2181,127.0.0.2:x", "bad host '127.0.0.2:x' in the host list"),
        ("zookeeper://127.0.0.1:99999", "bad host '127.0.0.1:99999'"),
        ("zookeeper://user@127.0.0.1:2181", "bad host 'user@127.0.0.1:2181'"),
        ("zookeeper://127.0.0.1:2181/a//b", "bad chroot '/a//b'"),
        ("zookeeper://127.0.0.1:2181?layout=eureka", "layout must be curator or dubbo"),
        ("zookeeper://127.0.0.1:2181?session_timeout=0", "session_timeout must be 1..600"),
        ("zookeeper://127.0.0.1:2181?layot=dubbo", "unknown option"),
        ("eurka://127.0.0.1:8761/eureka", "did you mean eureka://"),
        ("eureka://127.0.0.1:8761/eureka,:8761/eureka", "bad host or port ':8761'"),
        ("eureka://127.0.0.1:x/eureka", "bad host or port '127.0.0.1:x'"),
        ("eureka://user@127.0.0.1:8761/eureka", "expected eureka://HOST"),
        ("eureka://127.0.0.1:8761/eureka?ttl=0", "ttl must be whole seconds"),
        ("eureka://127.0.0.1:8761/eureka?tll=5", "unknown parameter"),
        ("nacoss://127.0.0.1:8848", "did you mean nacos://"),
        ("nacos://127.0.0.1:8848,:8848", "bad host or port ':8848'"),
        ("nacos://127.0.0.1:x", "bad host or port '127.0.0.1:x'"),
        ("nacos://127.0.0.1:8848/nacos", "expected nacos://HOST"),
        ("nacos://user@127.0.0.1:8848", "expected nacos://HOST"),
        ("nacos://127.0.0.1:8848?ttl=0", "ttl must be whole seconds"),
        ("nacos://127.0.0.1:8848?namespace=a/b", "namespace must be letters"),
        ("nacos://127.0.0.1:8848?group=a@@b", "group must be letters"),
        ("nacos://127.0.0.1:8848?grup=G", "unknown parameter"),
    ],
)
def test_bad_urls_are_rejected(url: str, message: str) -> None:
    """open_registry names what is wrong with a URL it cannot use."""
    with pytest.raises(RegistryURLError, match=message):
        open_registry(url)


# -- SQLite across processes ----------------------------------------------------------------------

KILLED_PROVIDER = """
import asyncio, sys
from registry_adapters.base import Instance
from registry_adapters.sqlite import SQLiteRegistry

async def main() -> None:
    path, service, ttl = sys.argv[1], sys.argv[2], float(sys.argv[3])
    registry = SQLiteRegistry(path, ttl=ttl, beat_interval=ttl / 5)
    await registry.register(Instance(service, service + "-1", "10.0.0.1", 8081))
    print("registered", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_sqlite_row_of_a_killed_process_expires(tmp_path: Path, service: str) -> None:
    """The instance of a process killed with SIGKILL expires after its TTL; others see it go."""
    path = tmp_path / "registry.db"
    provider = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        KILLED_PROVIDER,
        str(path),
        service,
        str(SHORT_TTL_S),
        stdout=PIPE,
        cwd=REPO_ROOT,
    )
    try:
        assert provider.stdout is not None
        assert await asyncio.wait_for(provider.stdout.readline(), STEP_S) == b"registered\n"
        async with open_registry(f"sqlite://{path}") as observer, watching(observer, service) as watch:
            await watch_until(watch, lambda instances: [i.address for i in instances] == ["10.0.0.1:8081"])
            os.kill(provider.pid, signal.SIGKILL)
            await watch_until(watch, lambda instances: instances == [], bound_s=SHORT_TTL_S + STEP_S)
    finally:
        if provider.returncode is None:
            os.kill(provider.pid, signal.SIGKILL)
        await provider.wait()


async def test_sqlite_beat_restores_a_deleted_row(
    tmp_path: Path, make: Callable[..., Instance], caplog: pytest.LogCaptureFixture
) -> None:
    """A row deleted behind the back of a registered instance is inserted again by its beat."""
    path = tmp_path / "registry.db"
    async with SQLiteRegistry(path, beat_interval=0.1) as registry:
        await registry.register(make())
        with closing(sqlite3.connect(path)) as db, db:
            assert db.execute("DELETE FROM instances").rowcount == 1
        async with watching(registry, make().service) as watch:
            await watch_until(watch, lambda instances: instances == [make()])
    assert any("vanished" in record.getMessage() for record in caplog.records)


# -- outages ---------------------------------------------------------------------------------------


async def test_server_down_raises_unavailable(
    fresh_registry: RegistryServer, make: Callable[..., Instance]
) -> None:
    """With the server stopped, every operation (a running watch and services too) fails fast
    with RegistryUnavailable."""
    async with open_registry(fresh_registry.url) as registry:
        await registry.register(make(1))
        async with watching(registry, make(1).service) as watch:
            await watch_until(watch, lambda instances: instances == [make(1)])
            blocked = asyncio.ensure_future(anext(watch))
            await asyncio.to_thread(fresh_registry.stop)
            async with asyncio.timeout(FAST_FAILURE_S):
                with pytest.raises(RegistryUnavailable):
                    await blocked
                with pytest.raises(RegistryUnavailable):
                    await registry.set_weight(make(1).instance_id, 5)
                with pytest.raises(RegistryUnavailable):
                    await registry.set_offline(make(1).instance_id)
                with pytest.raises(RegistryUnavailable):
                    await registry.register(make(2))
                with pytest.raises(RegistryUnavailable):
                    await anext(registry.watch(make(1).service))
                with pytest.raises(RegistryUnavailable):
                    await registry.services()
                with pytest.raises(RegistryUnavailable):
                    await registry.deregister(make(1).instance_id)


@pytest.mark.consul
async def test_consul_restart_reregisters(
    fresh_consul: ConsulAgent, make: Callable[..., Instance], caplog: pytest.LogCaptureFixture
) -> None:
    """After the agent comes back without its state, the beat registers the instances again,
    an instance in maintenance (weight 0) staying out of rotation."""
    service = make().service
    async with open_tuned(fresh_consul.url, beat_interval=0.3) as registry:
        await registry.register(make(1))
        await registry.register(make(2))
        await registry.set_weight(make(2).instance_id, 0)
        await asyncio.to_thread(fresh_consul.stop)
        await asyncio.to_thread(fresh_consul.start)
        await until_watched(registry, service, [make(1)])
        # Once the other one's check passes again, only its maintenance can keep it out.
        await until_ttl_check_passes(fresh_consul, make(2).instance_id)
        async with watching(registry, service) as watch:
            assert await next_list(watch) == [make(1)]
    messages = [
        record.getMessage() for record in caplog.records if "registering it again" in record.getMessage()
    ]
    assert all(
        any(instance_id in m for m in messages) for instance_id in (make(1).instance_id, make(2).instance_id)
    )


@pytest.mark.consul
async def test_consul_missed_change_is_published_by_the_beat(
    tmp_path: Path, make: Callable[..., Instance]
) -> None:
    """A weight change that failed while the agent was down is published by the beat once it is
    back, also when the agent kept its state (and so the old weight) across the restart."""
    agent = ConsulAgent(tmp_path / "consul", persistent=True)
    await asyncio.to_thread(agent.start)
    try:
        async with open_tuned(agent.url, beat_interval=0.3) as registry:
            await registry.register(make())
            async with watching(registry, make().service) as watch:
                await watch_until(watch, lambda instances: instances == [make()])
            await asyncio.to_thread(agent.stop)
            with pytest.raises(RegistryUnavailable):
                await registry.set_weight(make().instance_id, 25)
            await asyncio.to_thread(agent.start)
            await until_watched(registry, make().service, [make().with_weight(25)])
    finally:
        await asyncio.to_thread(agent.stop)


async def until_ttl_check_passes(agent: ConsulAgent, instance_id: str) -> None:
    """Poll the agent (an external process) until the TTL check of `instance_id` is passing."""
    url = f"http://127.0.0.1:{agent.http_port}/v1/agent/checks"
    async with aiohttp.ClientSession() as session, asyncio.timeout(STEP_S):
        while True:
            async with session.get(url) as response:
                checks: dict[str, dict[str, Any]] = await response.json()
            if any(
                c["ServiceID"] == instance_id and c["Type"] == "ttl" and c["Status"] == "passing"
                for c in checks.values()
            ):
                return
            await asyncio.sleep(0.1)


async def until_watched(registry: Registry, service: str, expected: list[Instance]) -> None:
    """Watch (again after each failure, the agent may still be starting) until `expected` shows."""
    async with asyncio.timeout(STEP_S * 2):
        while True:
            try:
                async with watching(registry, service) as watch:
                    async for instances in watch:
                        if instances == expected:
                            return
            except RegistryUnavailable:
                await asyncio.sleep(0.2)  # between tries at an external process
