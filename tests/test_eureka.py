"""Eureka as Eureka's own clients see it, on a real Eureka server (interop/eureka-server): what a
provider sidecar's record holds, the offline sequence as `OUT_OF_SERVICE` then a cancel, a
server that lost its registry, and self-preservation, which must not keep a crashed app's
instance in. The contract every backend keeps is tests/test_registry_contract.py's."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from registry_adapters.eureka import EurekaRegistry
from sidecar.protocol import metadata as meta
from tests.support.eureka_server import DEFAULT_SETTINGS, EurekaServer
from tests.support.procs import demo_app, sidecar, wait_for
from tests.support.registry_view import eureka_instances

pytestmark = pytest.mark.eureka

# The app-lost aim (README, "When the app dies"): out of the registry within 8 s of a crash when
# idle; a Eureka read shows it at once with the read-write cache.
CRASH_AIM_SECONDS = 8.0


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("eureka://127.0.0.1", "eureka at 127.0.0.1:8761/eureka"),
        ("eureka://10.0.0.1:8080/eureka/", "eureka at 10.0.0.1:8080/eureka"),
        ("eureka://a:1/eureka,b/ctx/eureka,[::1]:2", "eureka at a:1/eureka,b:8761/ctx/eureka,[::1]:2/eureka"),
    ],
)
def test_url_forms(url: str, where: str) -> None:
    """Several servers, each with its own port and service URL path (PATH defaults to /eureka)."""
    assert EurekaRegistry.from_url(urlsplit(url)).where == where


def statuses(server: EurekaServer, service: str) -> dict[str, str]:
    return {str(info["instanceId"]): str(info["status"]) for info in eureka_instances(server.url, service)}


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EurekaServer]:
    """A server of the module's own with Eureka's defaults (self-preservation on), but reads
    from the read-write cache: its tests restart it, and count on its first minute."""
    with EurekaServer(tmp_path_factory.mktemp("eureka"), DEFAULT_SETTINGS) as server:
        yield server


def test_record_and_offline_as_eureka_clients_read_them(tmp_path: Path, eureka_server: EurekaServer) -> None:
    """The record holds the address, the weight and the sidecar's keys in the metadata, health
    and status pages at the admin API; /shutdown turns it OUT_OF_SERVICE, and the sidecar's exit
    cancels it."""
    service = "eu-record"
    args = ("--instance-id", "p1", "--quiet-period", "0.2")
    with demo_app(tmp_path) as app:
        with sidecar(tmp_path, eureka_server.url, app, *args, service=service) as car:
            [info] = eureka_instances(eureka_server.url, service)
            assert (info["status"], info["app"], info["vipAddress"]) == ("UP", "EU-RECORD", service)
            assert (info["ipAddr"], info["port"]["$"]) == ("127.0.0.1", car.listen_port)
            metadata: dict[str, Any] = info["metadata"]
            assert metadata["weight"] == "100"
            assert metadata[meta.META_ADMIN] == car.admin
            assert meta.META_START_MS in metadata
            assert info["healthCheckUrl"] == f"{car.admin}/ready"
            assert httpx.get(info["healthCheckUrl"], verify=False).status_code == 200
            assert httpx.get(f"{car.admin}/shutdown", timeout=30, verify=False).status_code == 200
            # Out of service from step 2; cancelled at the end of the sequence, or at the exit.
            assert statuses(eureka_server, service) in ({"p1": "OUT_OF_SERVICE"}, {})
        wait_for(lambda: statuses(eureka_server, service) == {}, what="the record cancelled")


def test_server_that_lost_its_registry_gets_the_instance_back(
    tmp_path: Path, own_server: EurekaServer
) -> None:
    """A Eureka server restarted (its registry is memory) answers the next renewal 404: the
    sidecar registers again at once, UP."""
    service = "eu-restart"
    registry = f"{own_server.url}?ttl=3"  # a renewal a second
    with demo_app(tmp_path) as app, sidecar(tmp_path, registry, app, "--instance-id", "p1", service=service):
        assert statuses(own_server, service) == {"p1": "UP"}
        own_server.stop()
        restarted_ms = time.time() * 1000
        own_server.start()
        wait_for(lambda: statuses(own_server, service) == {"p1": "UP"}, 10, "registered again")
        [info] = eureka_instances(own_server.url, service)
        assert info["leaseInfo"]["registrationTimestamp"] > restarted_ms


def test_self_preservation_does_not_keep_a_crashed_app(tmp_path: Path, own_server: EurekaServer) -> None:
    """Self-preservation (on by default, and in force from the start: the server has counted no
    renewals yet) stops a server from evicting instances whose renewals stopped. The sidecar
    does not wait for an eviction when its app dies: it sets the instance OUT_OF_SERVICE itself
    (an explicit status, which self-preservation does not hold back) within the crash aim."""
    service = "eu-crash"
    args = ("--instance-id", "crashing")
    with (
        demo_app(tmp_path, "crashing") as app,
        sidecar(tmp_path, own_server.url, app, *args, service=service),
    ):
        assert statuses(own_server, service) == {"crashing": "UP"}
        app.proc.send_signal(signal.SIGKILL)
        app.proc.wait()
        wait_for(
            lambda: statuses(own_server, service) == {"crashing": "OUT_OF_SERVICE"},
            CRASH_AIM_SECONDS,
            "the crashed app's instance out of service",
        )
