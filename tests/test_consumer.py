"""The consumer side, black box: a consumer-only sidecar (`--upstream NAME=HOST:PORT`) in front of
real providers (demo app + provider sidecar), real registries, real processes.

To keep a *stale* entry in a consumer's table (an instance the registry would otherwise take
away at once), the consumer watches a SQLite file of the test's own, where the test publishes
the instances itself (`publish`), while provider sidecars register in another file. The
consumer then learns about an instance going away only from what the scenario under test
sends it: a closing header, a refusal, a refused connection, a broken one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from registry_adapters import Instance
from registry_adapters.sqlite import SQLiteRegistry
from sidecar.demo.loadgen import LoadGenerator
from sidecar.protocol.metadata import (
    META_START_MS,
    META_WARMUP_CURVE,
    META_WARMUP_S,
    META_WEIGHT,
    META_WEIGHT_OVERRIDE,
)
from tests.support.consul_agent import ConsulAgent
from tests.support.ports import free_port
from tests.support.procs import (
    AppProc,
    SidecarProc,
    await_for,
    demo_app,
    metric,
    open_gate,
    sidecar,
    wait_for,
)
from tests.support.registry_view import consul_http, registered_ids, watched

TOKEN = "fleet-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Loopback is not in it: notifications from providers without the token are refused (403).
FOREIGN_ONLY = ("--allow", "192.0.2.0/24", "--token", TOKEN)
# Rows published by the test outlive it: nothing in the test keeps them alive.
TEST_ROW_TTL_S = 600.0
# Registry weights for instances published by the test (no sidecar metadata, so the consumer
# uses them as they are): the first pick goes to FAVOURED with probability 65535/65536.
FAVOURED, DISFAVOURED = 65535, 1
# A well-formed offline notice (the contract's body); tests change the fields they need.
VALID = {"service": "svc", "instance_id": "only", "address": "127.0.0.1:1", "event": "offline"}


# -- helpers ---------------------------------------------------------------------------------------


def unique(prefix: str = "svc") -> str:
    """A service name no other test uses (the session's Consul agent is shared)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def publish(registry: str, *instances: Instance) -> None:
    """Register `instances` in a SQLite registry as the test, with a long TTL and no heartbeat."""

    async def register() -> None:
        async with SQLiteRegistry(registry.removeprefix("sqlite://"), ttl=TEST_ROW_TTL_S) as db:
            for instance in instances:
                await db.register(instance)

    # A loop of its own, in a thread: callable from sync and async tests alike.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, register()).result(timeout=30)


def instance_at(service: str, instance_id: str, port: int, weight: int = 100) -> Instance:
    return Instance(service, instance_id, "127.0.0.1", port, weight)


@dataclass
class Provider:
    instance_id: str
    app: AppProc
    car: SidecarProc

    @property
    def port(self) -> int:
        assert self.car.listen_port is not None
        return self.car.listen_port


@dataclass
class Consumer:
    car: SidecarProc
    service: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return self.car.admin

    def table(self) -> dict[str, dict[str, Any]]:
        upstream = self.car.status()["upstreams"][self.service]
        return {row["instance_id"]: row for row in upstream["instances"]}

    def wait_table(self, *instance_ids: str, timeout: float = 20.0) -> dict[str, dict[str, Any]]:
        """Wait until the table holds exactly these instances, none dropped."""
        wanted = set(instance_ids)

        def matches() -> dict[str, dict[str, Any]] | None:
            table = self.table()
            fine = set(table) == wanted and not any(row["dropped"] for row in table.values())
            return table if fine else None

        table: dict[str, dict[str, Any]] = wait_for(
            matches, timeout, f"the consumer to know {sorted(wanted)}"
        )
        return table

    def instance_names(self, count: int, client: httpx.Client, method: str = "GET") -> list[str]:
        """Send `count` requests through the consumer; the names of the apps that answered."""
        names = []
        for n in range(count):
            response = client.request(method, f"{self.url}/work?ms=0&n={n}", content=b'{"n": 1}')
            assert response.status_code == 200, response.text
            names.append(response.json()["instance"])
        return names


@contextmanager
def provider(
    tmp_path: Path, registry: str, service: str, name: str, *args: str, app: AppProc | None = None
) -> Iterator[Provider]:
    """A demo app named `name` behind a provider sidecar whose instance id is also `name`."""
    with ExitStack() as stack:
        if app is None:
            app = stack.enter_context(demo_app(tmp_path, name=name))
        argv = ("--instance-id", name, "--quiet-period", "0.2", *args)
        car = stack.enter_context(sidecar(tmp_path, registry, app, *argv, service=service))
        yield Provider(name, app, car)


@contextmanager
def consumer(tmp_path: Path, registry: str, service: str, *args: str) -> Iterator[Consumer]:
    port = free_port()
    argv = ("--upstream", f"{service}=127.0.0.1:{port}", *args)
    with sidecar(tmp_path, registry, None, *argv, service="client") as car:
        yield Consumer(car, service, port)


@contextmanager
def two_providers(
    tmp_path: Path, registry: str, service: str
) -> Iterator[tuple[Provider, Provider, Consumer, httpx.Client]]:
    """Providers p1 and p2 of `service`, a consumer whose table has both, and a client."""
    with (
        provider(tmp_path, registry, service, "p1") as p1,
        provider(tmp_path, registry, service, "p2") as p2,
        consumer(tmp_path, registry, service) as client,
        httpx.Client(timeout=10) as http,
    ):
        client.wait_table("p1", "p2")
        yield p1, p2, client, http


def sqlite_url(tmp_path: Path, name: str) -> str:
    return f"sqlite://{tmp_path / name}"


# -- forwarding and the consumer header ----------------------------------------------------------


def test_forwards_and_gets_notified(tmp_path: Path, registry_url: str) -> None:
    """Requests through the consumer reach both providers, each provider then counts one
    consumer, and a provider going offline notifies the consumer, which stops sending to it."""
    service = unique()
    with two_providers(tmp_path, registry_url, service) as (p1, p2, client, http):
        assert set(client.instance_names(40, http)) == {"p1", "p2"}
        assert p1.car.status()["consumers"] == 1
        assert p2.car.status()["consumers"] == 1
        answer = httpx.get(f"{p1.car.admin}/shutdown", timeout=30, verify=False).json()
        assert answer["notified"] == 1
        assert metric(client.admin, "sidecar_notify_received_total") == 1
        row = client.table().get("p1")
        assert row is None or row["dropped"]
        assert set(client.instance_names(20, http)) == {"p2"}


async def test_consumer_header_is_its_admin_url(tmp_path: Path) -> None:
    """The consumer sends `X-Sidecar-Consumer: <its admin URL>` on every request, replacing any
    value its local caller sent, and the request otherwise arrives as sent."""
    seen: list[dict[str, str]] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"path": request.path_qs, "body": (await request.read()).decode()})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    registry = sqlite_url(tmp_path, "consumer.db")
    try:
        publish(registry, instance_at("svc", "echo", port))
        with consumer(tmp_path, registry, "svc") as client:
            await await_for(lambda: "echo" in client.table(), what="the echo instance in the table")
            async with httpx.AsyncClient(timeout=10) as http:
                plain = await http.post(f"{client.url}/a?b=c", content=b"hello", headers={"X-Custom": "kept"})
                spoofed = await http.get(
                    f"{client.url}/x", headers={"X-Sidecar-Consumer": "http://198.51.100.7:1"}
                )
    finally:
        await runner.cleanup()
    assert plain.json() == {"path": "/a?b=c", "body": "hello"}
    assert spoofed.status_code == 200
    assert len(seen) == 2
    assert [headers["X-Sidecar-Consumer"] for headers in seen] == [client.admin, client.admin]
    assert seen[0]["X-Custom"] == "kept"


# -- POST /notify --------------------------------------------------------------------------------


def test_notify_drops_instance_at_once(tmp_path: Path, registry_url: str) -> None:
    """POST /notify about one of two providers: it is dropped at once although the registry
    still lists it; every following request goes to the other; the metric counts it."""
    service = unique()
    with two_providers(tmp_path, registry_url, service) as (p1, p2, client, http):
        notice = {
            "service": service,
            "instance_id": "p1",
            "address": f"127.0.0.1:{p1.port}",
            "event": "offline",
        }
        answer = http.post(f"{client.admin}/notify", json=notice)
        assert answer.status_code == 204
        table = client.table()
        assert table["p1"]["dropped"] is True
        assert table["p2"]["dropped"] is False
        assert set(client.instance_names(30, http, method="POST")) == {"p2"}
        assert "p1" in registered_ids(registry_url, service)  # the registry has not caught up
        assert p1.car.status()["phase"] == "serving"
        assert metric(client.admin, "sidecar_notify_received_total") == 1
        assert metric(client.admin, "sidecar_upstream_instances", service=service) == 1
        assert p2.app.stats()["served"] >= 30


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consumer]:
    """A consumer that accepts /notify only with the token, and one demo app behind it."""
    tmp_path = tmp_path_factory.mktemp("notify")
    registry = sqlite_url(tmp_path, "consumer.db")
    with demo_app(tmp_path, name="only") as app, consumer(tmp_path, registry, "svc", *FOREIGN_ONLY) as client:
        publish(registry, instance_at("svc", "only", app.port))
        client.wait_table("only")
        yield client


def assert_json_error(response: httpx.Response, status: int, mentions: str = "") -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, str)
    assert mentions.lower() in error.lower(), error


def received(client: Consumer) -> float:
    return metric(client.admin, "sidecar_notify_received_total")


def assert_untouched(client: Consumer, received_before: float) -> None:
    """Nothing dropped, and the notice was not counted as received."""
    assert client.table()["only"]["dropped"] is False
    assert received(client) == received_before


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        (b'{"service": ', "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b'["svc", "only"]', "JSON object"),
        (b'"offline"', "JSON object"),
        (b"{}", "service"),
        (b'{"service": "", "instance_id": "only", "event": "offline"}', "service"),
        (b'{"service": "svc", "instance_id": 7, "event": "offline"}', "instance_id"),
        (b'{"service": "svc", "instance_id": "only"}', "event"),
        (b'{"service": "svc", "instance_id": "only", "event": "online"}', "unknown event"),
    ],
)
def test_notify_bad_body(guarded: Consumer, body: bytes, mentions: str) -> None:
    """A bad /notify body: 400 with a JSON error naming the problem; nothing is dropped."""
    client, before = guarded, received(guarded)
    response = httpx.post(f"{client.admin}/notify", content=body, headers=AUTH, verify=False)
    assert_json_error(response, 400, mentions)
    assert_untouched(client, before)


def test_notify_huge_body_and_wrong_methods(guarded: Consumer) -> None:
    """A 10 MB /notify body is a JSON 413; GET, PUT and DELETE /notify are JSON 405s."""
    client, before = guarded, received(guarded)
    huge = httpx.post(
        f"{client.admin}/notify", content=b"{" + b" " * 10_000_000, headers=AUTH, timeout=30, verify=False
    )
    assert_json_error(huge, 413, "too large")
    for method in ("GET", "PUT", "DELETE"):
        assert_json_error(
            httpx.request(method, f"{client.admin}/notify", headers=AUTH, verify=False), 405, method
        )
    assert_untouched(client, before)


def test_notify_needs_token_or_allowed_address(guarded: Consumer) -> None:
    """From loopback, outside --allow, without the token or with a wrong one: 403, not dropped."""
    client, before = guarded, received(guarded)
    assert_json_error(httpx.post(f"{client.admin}/notify", json=VALID, verify=False), 403, "forbidden")
    wrong = {"Authorization": "Bearer not-the-token"}
    assert_json_error(
        httpx.post(f"{client.admin}/notify", json=VALID, headers=wrong, verify=False), 403, "forbidden"
    )
    assert_untouched(client, before)


def test_still_serves_after_bad_notifies(guarded: Consumer) -> None:
    """After bad notices the consumer still proxies, and a valid notice about an unknown instance
    is accepted (204) without touching its table."""
    client, before = guarded, received(guarded)
    with httpx.Client(timeout=10) as http:
        assert client.instance_names(5, http) == ["only"] * 5
        ghost = {**VALID, "instance_id": "ghost"}
        assert http.post(f"{client.admin}/notify", json=ghost, headers=AUTH).status_code == 204
        assert client.table()["only"]["dropped"] is False
        assert received(client) == before + 1
        assert client.instance_names(5, http) == ["only"] * 5
    assert client.car.proc.poll() is None
    assert "Traceback" not in client.car.log()


def test_reregistered_instance_comes_back(tmp_path: Path, registry_url: str) -> None:
    """An instance notified offline comes back once it registers anew (same id, new
    sidecar_start_ms): the consumer un-drops it and sends it traffic again."""
    service = unique()
    with two_providers(tmp_path, registry_url, service) as (p1, _, client, http):
        notice = {**VALID, "service": service, "instance_id": "p1"}
        assert http.post(f"{client.admin}/notify", json=notice).status_code == 204
        assert client.table()["p1"]["dropped"] is True
        # The old sidecar dies without going offline, so its registration is still there when
        # the new one (a new incarnation of the same id) replaces it.
        p1.car.proc.kill()
        p1.car.proc.wait(10)
        with provider(tmp_path, registry_url, service, "p1", app=p1.app) as reborn:
            table = client.wait_table("p1", "p2")
            assert table["p1"]["address"] == f"127.0.0.1:{reborn.port}"
            wait_for(lambda: "p1" in client.instance_names(1, http), 10, "a request to reach p1 again")
            assert reborn.car.status()["consumers"] == 1


# -- what providers tell the consumer on the way out ---------------------------------------------


async def test_closing_response_drops_instance(tmp_path: Path) -> None:
    """A response marked X-Sidecar-Closing (a provider draining with a slow request in flight)
    drops that instance at once: all later requests go to the other provider, although the
    registry the consumer watches still lists it and its notification was refused."""
    own, watched = sqlite_url(tmp_path, "providers.db"), sqlite_url(tmp_path, "consumer.db")
    with (
        provider(tmp_path, own, "svc", "p1") as p1,
        provider(tmp_path, own, "svc", "p2") as p2,
        consumer(tmp_path, watched, "svc", *FOREIGN_ONLY) as client,
    ):
        publish(watched, instance_at("svc", "p1", p1.port))
        client.wait_table("p1")
        async with httpx.AsyncClient(timeout=30) as http:
            # Held at p1's app until p1 drains (a gate, not a timer: it cannot end too soon).
            slow = asyncio.create_task(http.get(f"{client.url}/wait", params={"gate": "slow"}))
            await await_for(lambda: p1.car.status()["inflight"] == 1, what="the slow request on p1")
            publish(watched, instance_at("svc", "p2", p2.port))
            client.wait_table("p1", "p2")
            shutdown = asyncio.create_task(http.get(f"{p1.car.admin}/shutdown"))
            await await_for(lambda: p1.car.status()["phase"] == "draining", what="p1 draining")
            open_gate(p1.app, "slow")
            response = await slow
            assert response.status_code == 200
            assert response.json()["instance"] == "p1"
            assert response.headers["X-Sidecar-Closing"] == "p1"
            assert client.table()["p1"]["dropped"] is True
            after = [await http.get(f"{client.url}/work", params={"n": n}) for n in range(20)]
            assert [r.json()["instance"] for r in after] == ["p2"] * 20
            drained = (await shutdown).json()
        assert drained["drained"] is True
        assert drained["notified"] == 0  # the consumer refused it: no token, not in --allow
        assert metric(client.admin, "sidecar_notify_received_total") == 0


def test_refused_post_is_retried_elsewhere(tmp_path: Path) -> None:
    """A drained provider answers 503 + X-Sidecar-Refused without calling its app; the consumer
    sends even a POST on to another instance, and drops the refusing one."""
    own, watched = sqlite_url(tmp_path, "providers.db"), sqlite_url(tmp_path, "consumer.db")
    with (
        provider(tmp_path, own, "svc", "p1", "--quiet-period", "0") as p1,
        provider(tmp_path, own, "svc", "p2") as p2,
        consumer(tmp_path, watched, "svc", *FOREIGN_ONLY) as client,
        httpx.Client(timeout=10) as http,
    ):
        publish(
            watched,
            instance_at("svc", "p1", p1.port, FAVOURED),
            instance_at("svc", "p2", p2.port, DISFAVOURED),
        )
        client.wait_table("p1", "p2")
        assert http.get(f"{p1.car.admin}/shutdown", timeout=30).json()["drained"] is True
        posts = [http.post(f"{client.url}/work?ms=0&post={n}", content=b'{"order": 42}') for n in range(10)]
        assert [(r.status_code, r.json()["instance"]) for r in posts] == [(200, "p2")] * 10
        assert not any("post=" in path for path in p1.app.stats()["paths"])
        assert sum("post=" in path for path in p2.app.stats()["paths"]) == 10
        assert client.table()["p1"]["dropped"] is True
        assert metric(client.admin, "sidecar_upstream_retries_total", service="svc", reason="refused") >= 1


def test_refused_by_serving_provider_is_retried_and_ejected(tmp_path: Path) -> None:
    """A serving provider whose app is gone refuses (503 + X-Sidecar-Refused, not closing): a
    POST goes on to another instance, and the refusing one is ejected for a while, not dropped."""
    registry = sqlite_url(tmp_path, "registry.db")
    with (
        provider(tmp_path, registry, "svc", "p1", "--weight", str(FAVOURED)) as p1,
        provider(tmp_path, registry, "svc", "p2", "--weight", str(DISFAVOURED)),
        consumer(tmp_path, registry, "svc") as client,
        httpx.Client(timeout=10) as http,
    ):
        client.wait_table("p1", "p2")
        p1.app.proc.kill()
        p1.app.proc.wait(10)
        assert client.instance_names(10, http, method="POST") == ["p2"] * 10
        row = client.table()["p1"]
        assert (row["ejected"], row["dropped"]) == (True, False)
        assert metric(client.admin, "sidecar_upstream_retries_total", service="svc", reason="refused") >= 1


# -- connection failures -------------------------------------------------------------------------


def test_connection_refused_is_retried_and_ejected(tmp_path: Path) -> None:
    """An instance whose port has nothing listening: a POST goes on to another instance, and the
    dead one is shown ejected."""
    watched = sqlite_url(tmp_path, "consumer.db")
    with (
        demo_app(tmp_path, name="alive") as alive,
        consumer(tmp_path, watched, "svc") as client,
        httpx.Client(timeout=10) as http,
    ):
        publish(
            watched,
            instance_at("svc", "dead", free_port(), FAVOURED),
            instance_at("svc", "alive", alive.port, DISFAVOURED),
        )
        client.wait_table("dead", "alive")
        assert client.instance_names(10, http, method="POST") == ["alive"] * 10
        table = client.table()
        assert table["dead"]["ejected"] is True
        assert table["alive"]["ejected"] is False
        assert metric(client.admin, "sidecar_upstream_retries_total", service="svc", reason="connect") >= 1


async def test_inflight_count_survives_registry_changes(tmp_path: Path) -> None:
    """The consumer's in-flight count of an instance returns to 0 after a request that was in
    flight while the instance's registry entry changed (a new weight, as warmup steps publish)."""
    watched = sqlite_url(tmp_path, "consumer.db")
    with demo_app(tmp_path, name="app") as app, consumer(tmp_path, watched, "svc") as client:
        publish(watched, instance_at("svc", "app", app.port, 100))
        client.wait_table("app")
        async with httpx.AsyncClient(timeout=30) as http:
            slow = asyncio.create_task(http.get(f"{client.url}/wait", params={"gate": "slow"}))
            await await_for(lambda: client.table()["app"]["inflight"] == 1, what="the request in flight")
            publish(watched, instance_at("svc", "app", app.port, 50))
            await await_for(lambda: client.table()["app"]["weight"] == 50, what="the new weight")
            open_gate(app, "slow")  # only now: the change came while the request was in flight
            assert (await slow).status_code == 200
        await await_for(lambda: client.table()["app"]["inflight"] == 0, 3, "in flight back to 0")


class HangUp:
    """A server that reads one whole request, then closes the connection without answering."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.port = free_port()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> HangUp:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)  # all of it: the close is a clean FIN, not a reset
            self.requests.append(head.split(b"\r\n", 1)[0])
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_broken_connection_retried_only_when_idempotent(tmp_path: Path) -> None:
    """A connection that breaks after the request was sent: a POST is not sent again (502, the
    server saw it once); a GET is retried on another instance and succeeds."""
    watched = sqlite_url(tmp_path, "consumer.db")
    async with HangUp() as hangup, httpx.AsyncClient(timeout=10) as http:
        with demo_app(tmp_path, name="alive") as alive, consumer(tmp_path, watched, "svc") as client:
            publish(watched, instance_at("svc", "hangup", hangup.port, FAVOURED))
            client.wait_table("hangup")
            post = await http.post(f"{client.url}/work?ms=0", content=b'{"order": 42}')
            assert post.status_code == 502
            assert "error" in post.json()
            assert hangup.requests == [b"POST /work?ms=0 HTTP/1.1"]
            assert metric(client.admin, "sidecar_upstream_retries_total", service="svc", reason="broken") == 0

            publish(watched, instance_at("svc", "alive", alive.port, DISFAVOURED))
            client.wait_table("hangup", "alive")
            gets = [await http.get(f"{client.url}/work", params={"n": n}) for n in range(5)]
            assert [(r.status_code, r.json()["instance"]) for r in gets] == [(200, "alive")] * 5
            assert any(line.startswith(b"GET /work") for line in hangup.requests)
            assert metric(client.admin, "sidecar_upstream_retries_total", service="svc", reason="broken") >= 1
            assert client.table()["hangup"]["dropped"] is False  # a broken request is not a verdict


# -- weights -------------------------------------------------------------------------------------

# Bernstein bounds (see test_balancer) for 200 sequential picks, at a failure probability of 1e-9:
# a share of 1/101 stays below 25 picks, a share of 1/2 within 100 +- 65.
PICKS = 200


def test_share_follows_weight_override(tmp_path: Path, registry_url: str) -> None:
    """PUT /weight on a provider puts the override in its registry metadata, which is what
    consumer sidecars read: the consumer's share follows it; DELETE /weight evens it out again."""
    service = unique()
    with two_providers(tmp_path, registry_url, service) as (p1, _, client, http):
        assert http.put(f"{p1.car.admin}/weight", json={"weight": 1}).json()["published"] is True
        published = {i.instance_id: i for i in watched(registry_url, service)}
        assert published["p1"].meta.get(META_WEIGHT_OVERRIDE) == "1"
        assert META_WEIGHT_OVERRIDE not in published["p2"].meta
        wait_for(lambda: client.table()["p1"]["weight"] == 1, what="the consumer to weigh p1 at 1")
        assert client.instance_names(PICKS, http).count("p1") < 25
        assert http.delete(f"{p1.car.admin}/weight").json()["published"] is True
        wait_for(lambda: client.table()["p1"]["weight"] == 100, what="the consumer to weigh p1 at 100")
        assert 35 <= client.instance_names(PICKS, http).count("p1") <= 165


def consul_register(registry: str, service: str, instance_id: str, port: int, meta: dict[str, str]) -> None:
    """Register an instance by hand, as another tool might, with weight 7 and `meta`."""
    entry = {
        "ID": instance_id,
        "Name": service,
        "Address": "127.0.0.1",
        "Port": port,
        "Meta": meta,
        "Weights": {"Passing": 7, "Warning": 1},
    }
    httpx.put(
        f"{consul_http(registry)}/v1/agent/service/register", json=entry, verify=False
    ).raise_for_status()


ABSURD = {
    "huge-weight": {META_WEIGHT: "9" * 400},
    "huge-start": {META_WEIGHT: "100", META_WARMUP_S: "60", META_START_MS: "9" * 400},
    "huge-override": {META_WEIGHT_OVERRIDE: "9" * 400},
    "nan-window": {META_WEIGHT: "100", META_WARMUP_S: "nan", META_START_MS: "1"},
    "inf-curve": {META_WEIGHT: "100", META_WARMUP_S: "60", META_WARMUP_CURVE: "inf", META_START_MS: "1"},
    "negative": {META_WEIGHT: "-100"},
    "non-ascii": {META_WEIGHT: "\u0661\u0660\u0660"},  # 100 in Arabic-Indic digits
    "empty": {META_WEIGHT: ""},
}


@pytest.mark.consul
def test_absurd_metadata_is_ignored(tmp_path: Path, consul_agent: ConsulAgent) -> None:
    """Consul entries registered by hand with absurd sidecar metadata (hundreds of digits, NaN,
    inf, negative, non-ASCII, empty): the consumer gives them their registry weight with one
    warning each, requests and /status succeed, and the table keeps following the registry."""
    registry, service = consul_agent.url, unique("absurd")
    with (
        demo_app(tmp_path, name="app") as app,
        consumer(tmp_path, registry, service) as client,
        httpx.Client(timeout=10) as http,
    ):
        for instance_id, meta in ABSURD.items():
            consul_register(registry, service, instance_id, app.port, meta)
        table = client.wait_table(*ABSURD)
        assert {row["weight"] for row in table.values()} == {7}
        assert set(client.instance_names(20, http)) == {"app"}
        consul_register(registry, service, "late", app.port, {META_WEIGHT: "30"})
        assert client.wait_table(*ABSURD, "late")["late"]["weight"] == 30
        httpx.put(
            f"{consul_http(registry)}/v1/agent/service/deregister/huge-weight", verify=False
        ).raise_for_status()
        client.wait_table(*(set(ABSURD) - {"huge-weight"}), "late")
        assert http.get(f"{client.admin}/status").status_code == 200
        log = client.car.log()
    warnings = [line for line in log.splitlines() if "invalid sidecar metadata" in line]
    for instance_id in ABSURD:
        assert len([line for line in warnings if f" {instance_id} " in line]) == 1, warnings
    assert len(warnings) == len(ABSURD)


# -- the registry ---------------------------------------------------------------------------------


@pytest.mark.consul
def test_registry_outage_keeps_last_table(tmp_path: Path, fresh_consul: ConsulAgent) -> None:
    """Consul stops: the consumer keeps its last table and requests still succeed, /status and
    the metrics show the watch failing; Consul back, empty (a dev agent forgets everything), until
    the providers register again by themselves: not one request fails, the error clears and the
    table is whole again."""
    registry = fresh_consul.url
    with (
        provider(tmp_path, registry, "svc", "p1"),
        provider(tmp_path, registry, "svc", "p2"),
        consumer(tmp_path, registry, "svc") as client,
        httpx.Client(timeout=10) as http,
    ):
        client.wait_table("p1", "p2")
        with LoadGenerator(client.url, concurrency=4, work_ms=(5, 50)) as load:
            fresh_consul.stop()
            error = wait_for(
                lambda: client.car.status()["upstreams"]["svc"]["last_error"],
                10,
                "the watch error in /status",
            )
            assert "watch" in error
            assert set(client.instance_names(30, http)) == {"p1", "p2"}
            assert metric(client.admin, "sidecar_registry_errors_total", op="watch") >= 1
            fresh_consul.start()

            def recovered() -> bool:
                # The registry first: the consumer holds its old table for a while after an
                # empty answer, so a whole table alone does not tell that the watch caught up.
                passing = http.get(f"{consul_http(registry)}/v1/health/service/svc?passing=1").json()
                if {entry["Service"]["ID"] for entry in passing} != {"p1", "p2"}:
                    return False
                # One status read for both: the old table is still whole until the watch succeeds.
                upstream = client.car.status()["upstreams"]["svc"]
                ids = {row["instance_id"] for row in upstream["instances"]}
                return upstream["last_error"] is None and ids == {"p1", "p2"}

            wait_for(recovered, 30, "the watch to recover with both providers registered again")
            # Both answer again (the registry's answer with both may still be on its way).
            wait_for(lambda: set(client.instance_names(30, http)) == {"p1", "p2"}, 10, "both to answer")
        assert len(load.samples) > 50
        assert load.failures() == []


def test_metrics_reflect_traffic_and_instances(tmp_path: Path) -> None:
    """sidecar_upstream_requests_total counts answers by status class and
    sidecar_upstream_instances follows the usable instances (registry, notifications)."""
    registry = sqlite_url(tmp_path, "registry.db")
    with (
        provider(tmp_path, registry, "svc", "p1"),
        provider(tmp_path, registry, "svc", "p2") as p2,
        consumer(tmp_path, registry, "svc") as client,
        httpx.Client(timeout=10) as http,
    ):
        client.wait_table("p1", "p2")

        def requests(result: str) -> float:
            return metric(client.admin, "sidecar_upstream_requests_total", service="svc", result=result)

        assert metric(client.admin, "sidecar_upstream_instances", service="svc") == 2
        client.instance_names(12, http)
        for _ in range(3):
            assert http.get(f"{client.url}/work?ms=soon").status_code == 400  # the app's own 400
        assert (requests("2xx"), requests("4xx"), requests("5xx")) == (12, 3, 0)

        notice = {**VALID, "instance_id": "p1"}
        assert http.post(f"{client.admin}/notify", json=notice).status_code == 204
        assert metric(client.admin, "sidecar_upstream_instances", service="svc") == 1
        assert http.get(f"{p2.car.admin}/shutdown", timeout=30).json()["drained"] is True
        wait_for(lambda: "p2" not in client.table(), what="p2 to leave the consumer's table")
        assert metric(client.admin, "sidecar_upstream_instances", service="svc") == 0
        unavailable = http.get(f"{client.url}/work")
        assert unavailable.status_code == 503
        assert "no instance" in unavailable.json()["error"]
        assert (requests("2xx"), requests("4xx"), requests("5xx")) == (12, 3, 1)
