"""`--app-health grpc[:SERVICE]`, black box: a provider sidecar in front of a real grpcio server
(tests/support/grpc_health_app.py, its own process, the standard grpc.health.v1 service) checks
the app's health with `grpc.health.v1.Health/Check` over h2c, as Kubernetes' grpc probe does. It
registers only once the app says SERVING, says in /status why it does not (NOT_SERVING, an
unknown service, no health service at all), and takes the instance out of the registry when a
serving app turns NOT_SERVING, after the same confirmations as the HTTP check
(tests/test_app_lost.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from sidecar.protocol import metadata as meta
from sidecar.provider.app_health import HEALTH_FAILURES_LOST
from tests.support.grpc_health_app import GrpcHealthApp, grpc_health_app
from tests.support.procs import SidecarProc, sidecar_in_front, wait_for
from tests.support.registry_view import watched

# A serving app turned NOT_SERVING is out of the registry within a watch interval, the
# confirming checks and the registry write (the HTTP check's idle aim, README: 8 s).
LOST_AIM_SECONDS = 8.0


@contextmanager
def provider(tmp_path: Path, app: GrpcHealthApp, health: str, service: str) -> Iterator[SidecarProc]:
    """A provider sidecar in front of `app` (--app h2c://) with `--app-health health`, on a
    SQLite registry of the test's own; yielded once its admin API is up."""
    registry = f"sqlite://{tmp_path / 'registry.db'}"
    args = ("--app-health", health, "--instance-id", f"{service}-1")
    with sidecar_in_front(tmp_path, registry, app.url, *args, service=service, wait="live") as car:
        yield car


def last_check(car: SidecarProc) -> str:
    check: str = car.status()["app"]["last_check"] or ""
    return check


def starting_with(car: SidecarProc, outcome: str) -> dict[str, Any]:
    """Waits until the sidecar's last check says `outcome`; then it must still be starting,
    unregistered and not ready."""
    wait_for(lambda: last_check(car) == outcome, what=f"the check to say {outcome!r}")
    status = car.status()
    assert (status["phase"], status["ready"], status["registry"]["registered"]) == ("starting", False, False)
    assert httpx.get(f"{car.admin}/ready", timeout=5, verify=False).status_code == 503
    return status


def test_not_serving_keeps_it_out_of_the_registry_until_serving(tmp_path: Path) -> None:
    """An app whose health service says NOT_SERVING: the sidecar stays starting, with the reason
    in /status; once the app says SERVING it registers, publishing that it accepts h2c."""
    with (
        grpc_health_app(tmp_path, "--status", "NOT_SERVING") as app,
        provider(tmp_path, app, "grpc", "cart") as car,
    ):
        starting_with(
            car,
            f"gRPC Health/Check at 127.0.0.1:{app.port} -> NOT_SERVING; the app's health service says"
            " it cannot take calls",
        )
        assert watched(f"sqlite://{tmp_path / 'registry.db'}", "cart") == []
        app.set_status("SERVING")
        car.wait_ready()
        assert last_check(car) == f"gRPC Health/Check at 127.0.0.1:{app.port} -> SERVING"
        (instance,) = watched(f"sqlite://{tmp_path / 'registry.db'}", "cart")
        assert instance.instance_id == "cart-1"
        assert meta.accepts_h2c(instance.meta)


def test_an_unknown_service_is_named(tmp_path: Path) -> None:
    """`--app-health grpc:SERVICE` asks for that service: one the app's health service does not
    know (NOT_FOUND) is named with the fix; once the app serves it, the sidecar registers."""
    with grpc_health_app(tmp_path) as app, provider(tmp_path, app, "grpc:shop.Cart", "shop") as car:
        starting_with(
            car,
            f'gRPC Health/Check("shop.Cart") at 127.0.0.1:{app.port} -> NOT_FOUND; the app\'s health'
            ' service does not know the service "shop.Cart": set --app-health grpc:SERVICE to one it'
            " knows, or grpc for the server as a whole",
        )
        app.set_status("SERVING", "shop.Cart")
        car.wait_ready()


def test_an_app_without_health_service_says_how_to_skip_the_check(tmp_path: Path) -> None:
    """An app that serves no grpc.health.v1 service (UNIMPLEMENTED): the sidecar stays starting and
    says that the app has none and how to skip the check."""
    with grpc_health_app(tmp_path, "--no-health") as app, provider(tmp_path, app, "grpc", "bare") as car:
        starting_with(
            car,
            f"gRPC Health/Check at 127.0.0.1:{app.port} -> UNIMPLEMENTED; the app has no"
            " grpc.health.v1 service; set --app-health '' to skip the check",
        )


def test_a_serving_app_turned_not_serving_is_lost_and_comes_back(tmp_path: Path) -> None:
    """A registered app whose health turns NOT_SERVING leaves the registry after the confirming
    checks (within 8 s), the sidecar back in starting with the reason; SERVING again registers it
    anew, with a new sidecar_start_ms."""
    registry = f"sqlite://{tmp_path / 'registry.db'}"
    with grpc_health_app(tmp_path) as app, provider(tmp_path, app, "grpc", "flip") as car:
        car.wait_ready()
        (first,) = watched(registry, "flip")
        app.set_status("NOT_SERVING")
        flipped = time.monotonic()
        wait_for(lambda: watched(registry, "flip") == [], LOST_AIM_SECONDS * 2, "the instance out")
        assert time.monotonic() - flipped < LOST_AIM_SECONDS
        status = car.status()
        assert (status["phase"], status["ready"], status["registry"]["registered"]) == (
            "starting",
            False,
            False,
        )
        assert "-> NOT_SERVING;" in status["app"]["last_check"]
        assert f"app lost: {HEALTH_FAILURES_LOST} health checks in a row failed" in car.log()
        app.set_status("SERVING")
        car.wait_ready()
        (again,) = watched(registry, "flip")
        assert int(again.meta[meta.META_START_MS]) > int(first.meta[meta.META_START_MS])


def test_the_default_health_path_on_a_grpc_app_points_at_the_grpc_check(tmp_path: Path) -> None:
    """An h2c app left on the default `--app-health /health`: a gRPC server refuses the GET (over
    HTTP/2), and /status says to set --app-health grpc."""
    registry = f"sqlite://{tmp_path / 'registry.db'}"
    with (
        grpc_health_app(tmp_path) as app,
        sidecar_in_front(tmp_path, registry, app.url, service="plain", wait="live") as car,
    ):
        wait_for(lambda: last_check(car).startswith(f"GET {app.url}/health -> "), what="a failed GET")
        assert last_check(car).endswith(
            "; set --app-health PATH (or grpc for a gRPC server), or '' to skip the check"
        )
        assert car.status()["phase"] == "starting"
