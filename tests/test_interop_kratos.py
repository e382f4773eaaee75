"""go-kratos as a consumer without a sidecar: kratos's own etcd registry
(`contrib/registry/etcd`) watching the keys our provider sidecars write on a real etcd, and
kratos's default selector (weighted round robin over `selector.NewNode`, which reads
`metadata.weight`) picking among them. The peer is interop/kratos (its source says what it
prints). One peer and one fleet for the module: the tests follow one warmup and one shutdown.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from sidecar.demo.fleet import Fleet, Provider
from tests.support.etcd_server import EtcdServer
from tests.support.interop import Event, Peer, running_peer

pytestmark = pytest.mark.etcd

WARMUP = 10  # seconds: one published step a second (the step is max(1 s, warmup / 20))
PICKS = 1000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ids(event: Event) -> set[str]:
    return {row["id"] for row in event["instances"]}


def weight_of(event: Event, instance_id: str) -> int | None:
    rows = [row for row in event["instances"] if row["id"] == instance_id]
    return int(rows[0]["metadata"]["weight"]) if rows else None


@dataclass
class Setting:
    peer: Peer
    fleet: Fleet
    steady: Provider  # registered without warmup before the peer looked
    warming: Provider  # started with --warmup WARMUP once the peer saw `steady`
    warming_seen_ms: int  # when the peer first saw the warming instance


@pytest.fixture(scope="module")
def setting(etcd_server: EtcdServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setting]:
    workdir = tmp_path_factory.mktemp("kratos")
    service = f"kratos-{uuid.uuid4().hex[:8]}"
    peer_args = ["--etcd", f"127.0.0.1:{etcd_server.client_port}", "--service", service]
    with Fleet(workdir, etcd_server.url, service, app_startup_delay=0.0) as fleet:
        steady = fleet.start_provider("steady")
        with running_peer("kratos", [*peer_args, "--picks", str(PICKS)], workdir / "peer.log") as peer:
            peer.wait_event(lambda e: e["event"] == "instances" and ids(e) == {"steady"}, what="steady")
            warming = fleet.start_provider("warming", "--warmup", str(WARMUP))
            seen = peer.wait_event(
                lambda e: e["event"] == "instances" and "warming" in ids(e), 30, "the warming instance"
            )
            yield Setting(peer, fleet, steady, warming, seen["t"])


def test_kratos_watcher_reads_our_instances(setting: Setting) -> None:
    """kratos's watcher lists both instances with the sidecar's listener as an http endpoint, our
    metadata, and the registry weight under `weight`."""
    event = setting.peer.wait_event(lambda e: e["event"] == "instances" and len(ids(e)) == 2, 30, "both")
    rows = {row["id"]: row for row in event["instances"]}
    for provider in (setting.steady, setting.warming):
        row = rows[provider.name]
        assert row["endpoints"] == [f"http://{provider.listen}", f"grpc://{provider.listen}"]
        meta = row["metadata"]
        assert meta["sidecar_admin"] == provider.admin
        assert int(meta["sidecar_start_ms"]) > 0
        assert meta["weight"].isdigit()
    assert rows["steady"]["metadata"]["weight"] == "100"


def test_warming_weight_rises_in_steps_and_kratos_picks_follow(setting: Setting) -> None:
    """The warming instance's `weight` rises in several steps to 100 as kratos's watcher sees
    it, and kratos's weighted round robin gives it a share in proportion: small early, half once
    warm."""
    peer = setting.peer
    peer.wait_event(
        lambda e: e["event"] == "instances" and weight_of(e, "warming") == 100, WARMUP + 20, "full weight"
    )
    seen = [weight_of(e, "warming") for e in peer.of("instances")]
    weights = [w for w in seen if w is not None]
    steps = sorted(set(weights))
    assert weights == sorted(weights), f"the weight went down during warmup: {weights}"
    assert len(steps) >= 4, steps
    assert (steps[0], steps[-1]) == (10, 100), steps  # from --warmup-min-percent 10 to the base
    # The picks: one round after full weight is seen, then judge every round with both nodes.
    full_at = peer.wait_event(
        lambda e: e["event"] == "picks" and e["weights"].get("warming") == 100, 10, "picks at full weight"
    )["t"]
    rounds = [e for e in peer.of("picks") if set(e["weights"]) == {"steady", "warming"}]
    for event in rounds:  # kratos's selector follows the metadata weight exactly
        expected = event["weights"]["warming"] / (event["weights"]["warming"] + event["weights"]["steady"])
        assert abs(event["shares"].get("warming", 0.0) - expected) <= 0.01, event
    early = [e["shares"].get("warming", 0.0) for e in rounds if e["t"] < setting.warming_seen_ms + 2000]
    late = [e["shares"]["warming"] for e in rounds if e["t"] >= full_at]
    assert early, "no round of picks in the warming instance's first 2 s"
    assert max(early) < 0.15, early  # weight 10 against 100: 1/11 of the picks
    assert min(late) > 0.45, late


def test_key_gone_before_shutdown_answers(setting: Setting) -> None:
    """At /shutdown the key is deleted first: kratos's watcher drops the instance before the
    sidecar answers /shutdown, and the selector sends it nothing from the next round on."""
    peer, warming = setting.peer, setting.warming
    answer: dict[str, Any] = {}

    def shutdown() -> None:
        answer["sent"] = now_ms()
        answer["body"] = httpx.get(f"{warming.admin}/shutdown", timeout=60, verify=False).json()
        answer["answered"] = now_ms()

    thread = threading.Thread(target=shutdown)
    thread.start()
    gone = peer.wait_event(
        lambda e: (
            e["event"] == "instances" and e["t"] >= answer.get("sent", 1 << 62) and ids(e) == {"steady"}
        ),
        30,
        "the warming instance gone",
    )
    thread.join(60)
    assert answer["body"]["drained"] is True
    assert gone["t"] <= answer["answered"], (gone["t"] - answer["sent"], answer["answered"] - answer["sent"])
    after = peer.wait_event(lambda e: e["event"] == "picks" and e["t"] > gone["t"] + 300, 10, "picks after")
    assert after["shares"] == {"steady": 1.0}
    print(
        f"kratos: key gone {gone['t'] - answer['sent']} ms after /shutdown was sent, "
        f"/shutdown answered after {answer['answered'] - answer['sent']} ms"
    )
