"""Shared fixtures. Registries are real: SQLite files in tmp_path, Consul and etcd from .tools/,
ZooKeeper from Debian's package, Eureka built from Maven Central (interop/eureka-server)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.consul_agent import ConsulAgent
from tests.support.etcd_server import EtcdServer
from tests.support.eureka_server import EurekaServer
from tests.support.nacos_server import NacosServer
from tests.support.procs import AppProc, SidecarChain, SidecarProc, consumer_of, demo_app, sidecar
from tests.support.registry_server import RegistryServer, live_registry_url
from tests.support.zookeeper_server import ZooKeeperServer

# -- order -----------------------------------------------------------------------------------------

# The modules that take longest (each runs on one worker: `make test` uses --dist loadfile and
# --no-loadscope-reorder), longest first, so that none of them is left to run alone at the end
# while the other workers idle. Ordered by the seconds each took in a run of the whole suite
# with --durations=0 (2026-12-07); the rest keep their order.
SLOW_MODULES_FIRST = (
    "test_rolling_restart.py",
    "test_consumer.py",
    "test_offline.py",
    "test_registry_contract.py",
    "test_http2_grpc.py",
    "test_registry_outage.py",
    "test_online.py",
    "test_warmup_latency.py",
    "test_rolling_restart_control.py",
    "test_interop_dubbo.py",
    "test_app_lost.py",
    "test_exec_lifecycle.py",
    "test_interop_spring_consul.py",
    "test_eureka.py",
    "test_http2_frames.py",
    "test_interop_grpc_go.py",
    "test_interop_spring_zookeeper.py",
    "test_interop_spring_eureka.py",
    "test_registry_stall.py",
    "test_nacos.py",
    "test_soak.py",
)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse a compiled data path older than a source: Python imports a module's extension before
    its .py, so the tests would run code that is no longer in the tree (make compiles it again)."""
    root = Path(__file__).resolve().parent.parent
    extensions = [*root.glob("sidecar/**/*.so"), *root.glob("sidecar_native__mypyc*.so")]
    if not extensions:
        return
    built = min(extension.stat().st_mtime for extension in extensions)
    sources = [*root.glob("sidecar/**/*.py"), *root.glob("registry_adapters/**/*.py")]
    newer = sorted(str(source.relative_to(root)) for source in sources if source.stat().st_mtime > built)
    if newer:
        pytest.exit(
            f"the compiled data path is older than {', '.join(newer[:3])}{' ...' if len(newer) > 3 else ''}:"
            " run `make compiled`, or `scripts/compile-data-path.sh --remove` to test from source",
            returncode=4,
        )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: n for n, name in enumerate(SLOW_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest as collected


# -- registries -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def consul_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsulAgent]:
    """One Consul dev agent for the whole session; tests keep apart by unique service names."""
    with ConsulAgent(tmp_path_factory.mktemp("consul")) as agent:
        yield agent


@pytest.fixture
def fresh_consul(tmp_path: Path) -> Iterator[ConsulAgent]:
    """A Consul dev agent of this test's own, which the test may stop and start again."""
    with ConsulAgent(tmp_path / "consul") as agent:
        yield agent


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd member per test process; tests keep apart by unique service names."""
    with EtcdServer(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@pytest.fixture
def fresh_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd member of this test's own, which the test may stop and start again (or wipe)."""
    with EtcdServer(tmp_path / "etcd") as server:
        yield server


@pytest.fixture(scope="session")
def zookeeper_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    """One ZooKeeper server per test process (its JVM takes a while to start); tests keep apart
    by unique service names."""
    with ZooKeeperServer(tmp_path_factory.mktemp("zookeeper")) as server:
        yield server


@pytest.fixture
def fresh_zookeeper(tmp_path: Path) -> Iterator[ZooKeeperServer]:
    """A ZooKeeper server of this test's own, which the test may stop and start again (or wipe)."""
    with ZooKeeperServer(tmp_path / "zookeeper") as server:
        yield server


@pytest.fixture(scope="session")
def eureka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EurekaServer]:
    """One Eureka server per test process (a Spring Boot JVM: seconds to start), with the test
    settings (changes shown at once, dead instances evicted within seconds); tests keep apart by
    unique service names."""
    with EurekaServer(tmp_path_factory.mktemp("eureka")) as server:
        yield server


@pytest.fixture
def fresh_eureka(tmp_path: Path) -> Iterator[EurekaServer]:
    """A Eureka server of this test's own, which the test may stop and start again."""
    with EurekaServer(tmp_path / "eureka") as server:
        yield server


@pytest.fixture(scope="session")
def nacos_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NacosServer]:
    """One Nacos server per test process (a JVM of two Spring contexts: seconds to start); tests
    keep apart by unique service names."""
    with NacosServer(tmp_path_factory.mktemp("nacos")) as server:
        yield server


@pytest.fixture(
    params=[
        pytest.param("consul", marks=pytest.mark.consul),
        pytest.param("etcd", marks=pytest.mark.etcd),
        pytest.param("zookeeper", marks=pytest.mark.zookeeper),
        pytest.param("eureka", marks=pytest.mark.eureka),
    ]
)
def fresh_registry(request: pytest.FixtureRequest) -> RegistryServer:
    """A registry server of this test's own, of each kind that has a server, to stop and start."""
    server: RegistryServer = request.getfixturevalue(f"fresh_{request.param}")
    return server


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("consul", marks=pytest.mark.consul),
        pytest.param("etcd", marks=pytest.mark.etcd),
        pytest.param("zookeeper", marks=pytest.mark.zookeeper),
        pytest.param("eureka", marks=pytest.mark.eureka),
    ]
)
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a live registry of each kind (narrow it with indirect parametrization)."""
    return live_registry_url(request, request.param, tmp_path)


@pytest.fixture(scope="module")
def module_registry(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The URL of a SQLite registry of the test module's own, for the sidecars its fixtures start."""
    return f"sqlite://{tmp_path_factory.mktemp('registry') / 'r.db'}"


# -- processes ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AppProc, SidecarProc]]:
    """The demo app behind a provider sidecar with the default options (timeouts 10 s and 60 s:
    a connection closed within seconds was closed on purpose), once per test module."""
    tmp_path = tmp_path_factory.mktemp("proxied")
    with demo_app(tmp_path) as app, sidecar(tmp_path, f"sqlite://{tmp_path / 'r.db'}", app) as car:
        yield app, car


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarChain]:
    """A demo app behind a provider sidecar (instance id `provider`), and a consumer sidecar
    with an upstream listener for it, once per test module."""
    tmp_path = tmp_path_factory.mktemp("chain")
    registry = f"sqlite://{tmp_path / 'r.db'}"
    with ExitStack() as stack:
        app = stack.enter_context(demo_app(tmp_path))
        provider = stack.enter_context(sidecar(tmp_path, registry, app, "--instance-id", "provider"))
        consumer, consumer_port = stack.enter_context(consumer_of(tmp_path, registry, "provider"))
        yield SidecarChain(app, provider, consumer, consumer_port)
