"""Apache Dubbo (3.3, Java) as a consumer without a sidecar, on our ZooKeeper Dubbo layout: the
peer (interop/dubbo/) holds a generic Dubbo reference to the service through Dubbo's own
ZooKeeper registry, and reports what Dubbo's registry directory lists and the weight Dubbo's own
RandomLoadBalance gives each provider (AbstractLoadBalance.getWeight, warmup included) over the
directory's invokers, with the share of its picks.

One peer with Dubbo's defaults, one fleet and one ZooKeeper server for the module (plus a second
peer, with `delay-notification=0`, in its own test); each test starts the providers it stops.
The figures measured go to the test's output (`pytest -s`) for the README.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_plus

import pytest

from registry_adapters.zookeeper_layouts import DUBBO_INSTANCE_KEY
from sidecar.demo.fleet import Fleet, Provider
from tests.support.interop import Event, Peer, running_peer
from tests.support.registry_view import zookeeper_nodes
from tests.support.zookeeper_server import ZooKeeperServer

pytestmark = pytest.mark.zookeeper

SERVICE = "org.example.interop.Orders"  # a Java interface name, as Dubbo services have
WARMUP_S = 20
FULL = 100  # the sidecar's default base weight, which Dubbo's own default is too


@pytest.fixture(scope="module")
def fleet(zookeeper_server: ZooKeeperServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with Fleet(
        tmp_path_factory.mktemp("dubbo-fleet"), f"{zookeeper_server.url}?layout=dubbo", SERVICE
    ) as fleet:
        yield fleet


@contextmanager
def dubbo_consumer(registry: str, log: Path) -> Iterator[Peer]:
    """A Dubbo consumer of SERVICE on `registry` (Dubbo's registry address, its parameters
    included), subscribed before the test's providers exist (as a running consumer is)."""
    args = ["--registry", registry, "--service", SERVICE, "--interval-ms", "200", "--picks", "4000"]
    with running_peer("dubbo", args, log) as peer:
        peer.wait_event(lambda e: e["event"] == "ready", what="the Dubbo reference")
        yield peer


@pytest.fixture(scope="module")
def peer(zookeeper_server: ZooKeeperServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    """The Dubbo consumer with Dubbo's defaults."""
    with dubbo_consumer(zookeeper_server.url, tmp_path_factory.mktemp("dubbo-peer") / "peer.log") as peer:
        yield peer


@pytest.fixture(scope="module")
def steady(fleet: Fleet, peer: Peer) -> Provider:
    """A provider without warmup, in place for the whole module."""
    return fleet.start_provider("steady")


def addresses(event: Event) -> set[str]:
    return {provider["address"] for provider in event["providers"]}


def provider_params(event: Event, address: str) -> dict[str, str]:
    return next(p["params"] for p in event["providers"] if p["address"] == address)


def weight_params(event: Event, address: str) -> list[str]:
    """The `weight` parameter of each invoker at `address`."""
    return [p["params"]["weight"] for p in event["providers"] if p["address"] == address]


def published_params(registry: str, address: str) -> dict[str, str]:
    """The parameters of `address`'s node as the sidecar wrote it (Dubbo's raw values)."""
    for name in zookeeper_nodes(registry, SERVICE):
        url = unquote_plus(name)
        if f"://{address}/" in url:
            return dict(pair.split("=", 1) for pair in url.split("?", 1)[1].split("&"))
    raise AssertionError(f"no node of {address} in ZooKeeper")


def weights_after(peer: Peer, t_ms: float, address: str) -> Event:
    """The first weights event taken after `t_ms` (epoch ms) that lists `address`."""
    return peer.wait_event(
        lambda e: e["event"] == "weights" and e["t"] > t_ms and address in e["weights"],
        timeout=30,
        what=f"Dubbo's weight of {address}",
    )


def admin(provider: Provider, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{provider.admin}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, Any] = json.loads(response.read() or b"{}")
        return answer


def test_directory_lists_exactly_our_providers(fleet: Fleet, peer: Peer, steady: Provider) -> None:
    """Dubbo's registry directory holds an invoker at each sidecar's listen address, with the
    parameters the sidecar published; only `timestamp` is missing: Dubbo 3.3's ZooKeeper registry
    strips it (CacheableFailbackRegistry.stripOffVariableKeys) before the directory sees the URL."""
    other = fleet.start_provider("other")
    expected = {steady.listen, other.listen}
    seen = peer.wait_event(
        lambda e: e["event"] == "providers" and addresses(e) == expected, timeout=30, what="both providers"
    )
    for provider in (steady, other):
        dubbo = provider_params(seen, provider.listen)
        published = published_params(fleet.registry, provider.listen)
        assert "timestamp" in published
        assert "timestamp" not in dubbo
        kept = {key: value for key, value in published.items() if key != "timestamp"}
        assert {key: dubbo.get(key) for key in kept} == kept
        assert unquote(dubbo[DUBBO_INSTANCE_KEY]) == provider.name
        assert dubbo["interface"] == SERVICE
        assert dubbo["weight"] == str(FULL)
        assert dubbo["warmup"] == "0"
    assert all(p["protocol"] == "dubbo" and p["path"] == SERVICE for p in seen["providers"])
    admin(other, "GET", "/shutdown")


def test_warmup_reaches_dubbo_through_the_weight(fleet: Fleet, peer: Peer, steady: Provider) -> None:
    """A provider with `--warmup 20`: its URL carries the sidecar's weight steps with `warmup` 0,
    since Dubbo 3.3's directory gets no `timestamp` (a ramp left to Dubbo's own formula would
    give the cold instance its full weight at once). Dubbo's getWeight over its directory's
    invokers rises with the steps, as often as its 5 s notification delay lets a change through,
    up to the full weight; RandomLoadBalance's picks follow the weights."""
    warming = fleet.start_provider("warming", "--warmup", str(WARMUP_S))
    published = published_params(fleet.registry, warming.listen)
    assert published["warmup"] == "0"
    assert int(published["weight"]) < FULL
    began = (warming.ready_at - time.monotonic() + time.time()) * 1000  # epoch ms of /ready
    full = peer.wait_event(
        lambda e: e["event"] == "weights" and e["weights"].get(warming.listen) == FULL,
        timeout=WARMUP_S + 20,
        what="the full weight in Dubbo",
    )
    ramp = [e for e in peer.of("weights") if began <= e["t"] <= full["t"] and warming.listen in e["weights"]]
    weights = [event["weights"][warming.listen] for event in ramp]
    assert weights == sorted(weights)
    assert weights[0] < FULL / 2
    assert len(set(weights)) >= 3, weights
    for event in ramp:
        share = event["weights"][warming.listen] / (event["weights"][warming.listen] + FULL)
        assert abs(event["picks"][warming.listen] - share) < 0.05
    steps = sorted(set(weights))
    print(
        f"\ndubbo: weights of the warming provider in Dubbo's directory: {steps}, full after"
        f" {(full['t'] - began) / 1000:.1f} s (--warmup {WARMUP_S})"
    )
    admin(warming, "GET", "/shutdown")


def shutdown_while_watched(fleet: Fleet, peer: Peer, name: str) -> dict[str, float]:
    """Start provider `name`, await it in Dubbo's directory, GET /shutdown it, and await it gone
    (at most 10 s after /shutdown answered). Epoch ms of each step."""
    leaving = fleet.start_provider(name)
    listed = peer.wait_event(
        lambda e: e["event"] == "providers" and leaving.listen in addresses(e),
        timeout=30,
        what=f"{name} listed",
    )
    began = time.time() * 1000
    assert admin(leaving, "GET", "/shutdown")["drained"] is True
    answered = time.time() * 1000
    gone = peer.wait_event(
        lambda e: e["event"] == "providers" and e["t"] > began and leaving.listen not in addresses(e),
        timeout=10,
        what=f"{name} gone from Dubbo's directory",
    )
    assert addresses(gone), "the other provider stays listed"
    times = {"listed": listed["t"], "began": began, "answered": answered, "gone": gone["t"]}
    print(
        f"\ndubbo ({name}): gone from the directory {gone['t'] - began:.0f} ms after /shutdown began,"
        f" {gone['t'] - listed['t']:.0f} ms after the previous notification;"
        f" /shutdown answered after {answered - began:.0f} ms"
    )
    return times


def test_shutdown_with_dubbos_default_notification_delay(fleet: Fleet, peer: Peer, steady: Provider) -> None:
    """With Dubbo's defaults its ZooKeeper registry passes a change of the providers to the
    directory at most once per `delay-notification` (5000 ms): the watcher thread sleeps out the
    rest of 5 s since the previous notification. A provider shut down within 5 s of another
    change (a rolling restart) is dropped that much later, after /shutdown has answered."""
    times = shutdown_while_watched(fleet, peer, "leaving")
    assert times["gone"] > times["answered"]
    # 5 s, then the peer's next look (it reads ZooKeeper too): a busy JVM may take a second more.
    assert 4500 <= times["gone"] - times["listed"] <= 7000


def test_shutdown_without_notification_delay(
    fleet: Fleet, steady: Provider, zookeeper_server: ZooKeeperServer, tmp_path: Path
) -> None:
    """A Dubbo consumer whose registry sets `delay-notification=0` drops the provider as soon as
    its node is deleted (step 2 of the offline sequence): before /shutdown answers."""
    registry = f"{zookeeper_server.url}?delay-notification=0"
    with dubbo_consumer(registry, tmp_path / "peer.log") as peer:
        times = shutdown_while_watched(fleet, peer, "leaving-now")
    assert times["gone"] <= times["answered"]


def test_weight_override_changes_dubbos_weight(fleet: Fleet, peer: Peer, steady: Provider) -> None:
    """PUT /weight replaces the node: Dubbo's directory gets the new URL and its load balancer
    the new weight; DELETE /weight gives the base back. Each change reaches Dubbo at most 5 s
    after the one before (its default `delay-notification`), hence the long bound."""
    before = time.time() * 1000
    admin(steady, "PUT", "/weight", {"weight": 37})
    changed = peer.wait_event(
        lambda e: e["event"] == "weights" and e["t"] > before and e["weights"].get(steady.listen) == 37,
        timeout=20,
        what="Dubbo's weight 37",
    )
    listed = peer.wait_event(
        lambda e: e["event"] == "providers" and "37" in weight_params(e, steady.listen), what="the new URL"
    )
    # The node was replaced, not added beside the first: one invoker at that address.
    assert weight_params(listed, steady.listen) == ["37"]
    print(f"\ndubbo: weight override seen {changed['t'] - before:.0f} ms after PUT /weight (200 ms sampling)")
    cleared = time.time() * 1000
    admin(steady, "DELETE", "/weight")
    peer.wait_event(
        lambda e: e["event"] == "weights" and e["t"] > cleared and e["weights"].get(steady.listen) == FULL,
        timeout=20,
        what="Dubbo's weight back to 100",
    )
