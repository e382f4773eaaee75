"""An upstream without an instance says why (issue 19): a consumer sidecar asked for `orders` while
the registry has only `order` answers 503 with a body naming the registry and listing `order`, and
logs it once, not per request; again once it had an instance and lost it. A real consumer sidecar
on SQLite and on the real Consul agent; the instances are registered by the test itself."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from registry_adapters import Instance, Registry, RegistryUnavailable, open_registry
from sidecar.consumer import listing
from sidecar.consumer.listing import ServiceListing
from tests.support.ports import free_port
from tests.support.procs import await_for, sidecar
from tests.support.raw_app import RawApp

# Enough requests to show that the log does not follow them.
REQUESTS = 20
# A bound on a noisy shared machine for what takes milliseconds here.
DEADLINE_SECONDS = 15.0


@pytest.fixture(params=["sqlite", pytest.param("consul", marks=pytest.mark.consul)])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLite (a file of this test's own) and the session's Consul agent."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'r.db'}"
    return str(request.getfixturevalue("consul_agent").url)


@pytest.fixture
async def registry(registry_url: str) -> AsyncIterator[Registry]:
    async with open_registry(registry_url) as registry:
        yield registry


async def test_no_instance_names_the_registry_and_its_services(
    tmp_path: Path, registry_url: str, registry: Registry
) -> None:
    """`--upstream orders=` while the registry has only `order`: every request gets 503 naming
    the registry and its services, `order` among them; the log says it once for all of them, and
    once more after an instance of `orders` came and went (offline notice, deregistered)."""
    unique = uuid.uuid4().hex[:6]  # one Consul agent serves every test
    order, orders = f"order-{unique}", f"orders-{unique}"
    await registry.register(Instance(order, f"{order}-1", "127.0.0.1", free_port()))
    port = free_port()
    told = f"no instance of {orders} in {registry.where}"
    with (
        RawApp({}) as app,
        sidecar(tmp_path, registry_url, None, "--upstream", f"{orders}=127.0.0.1:{port}") as car,
    ):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

            async def order_listed() -> bool:
                answer = await client.get("/")
                return answer.status_code == 503 and order in answer.json().get("services", [])

            await await_for(order_listed, DEADLINE_SECONDS, f"{order} in the 503's services")
            for _ in range(REQUESTS):
                answer = await client.get("/")
                assert answer.status_code == 503
                body = answer.json()
                assert body["error"] == f"no instance of {orders} available"
                assert body["registry"] == registry.where
                assert body["services"] == sorted(body["services"])
                assert order in body["services"]
                assert orders not in body["services"]
            assert car.log().count(told) == 1

            # An instance of `orders` comes (the raw app answers 404), and goes.
            instance = Instance(orders, f"{orders}-1", "127.0.0.1", app.port)
            await registry.register(instance)
            await await_for(lambda: status_of(client, 404), DEADLINE_SECONDS, "the instance of orders used")
            # Gone as a provider sidecar goes: its offline notice (a registry that drops a table's
            # last instance unannounced is not believed at once: the empty-table protection).
            notice = {"service": orders, "instance_id": instance.instance_id, "event": "offline"}
            notice["address"] = instance.address
            assert (await client.post(f"{car.admin}/notify", json=notice)).status_code == 204
            await registry.deregister(instance.instance_id)
            await await_for(lambda: status_of(client, 503), DEADLINE_SECONDS, "503 again")
            for _ in range(REQUESTS):
                assert (await client.get("/")).status_code == 503
        assert car.log().count(told) == 2


async def status_of(client: httpx.AsyncClient, status: int) -> bool:
    return (await client.get("/")).status_code == status


class CountedRegistry:
    """A registry that counts `services` calls; each waits for `answer` (set: at once), then
    lists `names` or raises `error`."""

    where = "counted at 127.0.0.1:1"

    def __init__(self, names: list[str], error: Exception | None = None) -> None:
        self.names = names
        self.error = error
        self.calls = 0
        self.answer = asyncio.Event()
        self.answer.set()
        self.returned = asyncio.Event()

    async def services(self) -> list[str]:
        self.calls += 1
        await self.answer.wait()
        self.returned.set()
        if self.error is not None:
            raise self.error
        return self.names


async def test_one_listing_answers_many_requests() -> None:
    """Fifty 503s at once, and more right after: one registry call; a failed listing is told
    as the registry's error, also from one call."""
    registry = CountedRegistry(["order", "web"])
    async with ServiceListing(registry, "orders") as listed:  # type: ignore[arg-type]
        told = await asyncio.gather(*(listed.told() for _ in range(50)))
        told.append(await listed.told())
    assert told == [{"registry": "counted at 127.0.0.1:1", "services": ["order", "web"]}] * 51
    assert registry.calls == 1
    failing = CountedRegistry(
        [], RegistryUnavailable("counted at 127.0.0.1:1: connection refused (services)")
    )
    async with ServiceListing(failing, "orders") as listed:  # type: ignore[arg-type]
        told = await asyncio.gather(*(listed.told() for _ in range(10)))
    assert {t["services_error"] for t in told} == {"counted at 127.0.0.1:1: connection refused (services)"}
    assert failing.calls == 1


async def test_a_hanging_registry_holds_503s_a_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry that does not answer the listing: the first 503s wait for it LISTING_WAIT_SECONDS
    at most and say so; those after that bound do not wait at all, and no second call is made."""
    monkeypatch.setattr(listing, "LISTING_WAIT_SECONDS", 0.2)
    registry = CountedRegistry(["order"])
    registry.answer.clear()
    loop = asyncio.get_running_loop()
    async with ServiceListing(registry, "orders") as listed:  # type: ignore[arg-type]
        started = loop.time()
        first = await asyncio.wait_for(listed.told(), 5)
        waited = loop.time() - started
        started = loop.time()
        second = await asyncio.wait_for(listed.told(), 5)
        later = loop.time() - started
        registry.answer.set()
        await asyncio.wait_for(registry.returned.wait(), 5)  # the call is done when this wakes
        third = await listed.told()
    late = {
        "registry": registry.where,
        "services_error": "the registry did not list its services within 0.2 s",
    }
    assert (first, second) == (late, late)
    assert 0.15 <= waited < 1.0
    assert later < 0.05
    assert third == {"registry": registry.where, "services": ["order"]}
    assert registry.calls == 1
