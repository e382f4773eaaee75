"""What a new user meets in the first hour, said where they look (issue 19): why the provider is
not ready (the last health check and what to do, in /status and once in the log), a serving app
turning unhealthy (with the status it answered), a notification refused for want of the same
token (a warning naming the consumer and the fix), a sidecar whose registry never took its
registration (its shutdown does not wait for a deregistration that cannot matter, and says so),
and a consumer-only sidecar (it says so, and claims no deregistration). Real processes."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.support.ports import free_port
from tests.support.procs import await_for, demo_app, sidecar, sidecar_in_front
from tests.support.raw_app import RawApp

# A bound on a noisy shared machine for what takes milliseconds here.
DEADLINE_SECONDS = 15.0
# Health polls while starting come 5 a second: this many prove the log did not repeat itself.
POLLS_SEEN = 6


async def shutdown(admin: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as client:
        return await client.get(f"{admin}/shutdown", headers=headers)


async def test_not_ready_says_what_the_health_check_got(tmp_path: Path) -> None:
    """An app without the default /health (404, as `python -m http.server`): the provider stays
    `starting`, and /status and the log (once, however many polls) say what the check got and
    what to do."""
    with RawApp({}) as app:  # answers 404 to every path
        registry = f"sqlite://{tmp_path / 'r.db'}"
        with sidecar_in_front(tmp_path, registry, app.url, wait="live") as car:
            await app.wait_until(lambda: len(app.of_path("/health")) >= POLLS_SEEN, "health polls")
            expected = f"GET {app.url}/health -> 404; set --app-health PATH, or '' to skip the check"
            status = car.status()
            assert (status["phase"], status["ready"]) == ("starting", False)
            assert status["app"] == {"health": f"{app.url}/health", "healthy": True, "last_check": expected}
            assert car.log().count(expected) == 1


async def test_a_serving_app_turning_unhealthy_is_logged_with_its_status(tmp_path: Path) -> None:
    """A serving app whose /health turns 503: the log says what the check got (the status), and
    /status shows it."""
    with demo_app(tmp_path) as app, sidecar(tmp_path, f"sqlite://{tmp_path / 'r.db'}", app) as car:
        async with httpx.AsyncClient(timeout=5) as client:
            await client.post(f"{app.url}/health", params={"healthy": 0})  # answers 503 from now on
        failing = f"GET {app.url}/health -> 503"
        await await_for(lambda: failing in car.log(), DEADLINE_SECONDS, "the failing check in the log")
        assert car.status()["app"]["last_check"] == failing


async def test_a_refused_notification_names_the_consumer_and_the_fix(tmp_path: Path) -> None:
    """A consumer sidecar with another --token (and no --allow for the provider's address)
    refuses the offline notice: the provider's log warns, naming the consumer and the fix."""
    registry = f"sqlite://{tmp_path / 'r.db'}"
    upstream_port = free_port()
    with (
        demo_app(tmp_path) as app,
        sidecar(tmp_path, registry, app, "--instance-id", "p", "--token", "provider-token") as provider,
        sidecar(
            tmp_path, registry, None, "--upstream", f"svc=127.0.0.1:{upstream_port}",
            "--token", "consumer-token", "--allow", "192.0.2.0/24", service="client",
        ) as consumer,
    ):  # fmt: skip
        await await_for(
            lambda: (
                httpx.get(f"http://127.0.0.1:{upstream_port}/work", timeout=5, verify=False).status_code
                == 200
            ),
            DEADLINE_SECONDS,
            "a request through the consumer",
        )
        headers = {"Authorization": "Bearer provider-token"}
        body = (await shutdown(provider.admin, headers)).json()
        assert body["notified"] == 0
        warning = f"notify {consumer.admin}: refused with 403: give both sidecars the same --token"
        assert warning in provider.log()


async def test_a_never_registered_instance_shuts_down_at_once(tmp_path: Path) -> None:
    """Its registry down from the start (nothing listens at the Consul address), the instance
    never registered: /shutdown ends with the quiet period, not at the drain deadline waiting
    to deregister, and its body says it was never registered."""
    nowhere = f"consul://127.0.0.1:{free_port()}"
    with demo_app(tmp_path) as app, sidecar(tmp_path, nowhere, app, wait="live") as car:
        await await_for(lambda: car.status()["registry"]["last_error"], DEADLINE_SECONDS, "a registry error")
        started = time.monotonic()
        body = (await shutdown(car.admin)).json()
        elapsed = time.monotonic() - started
    assert (body["registered"], body["deregistered"], body["drained"]) == (False, False, True), body
    assert elapsed < 10, f"/shutdown took {elapsed:.1f} s (the drain deadline is 25 s)"


async def test_a_consumer_only_sidecar_says_so(tmp_path: Path) -> None:
    """A sidecar without --listen: /status says consumer-only and has no weight nor app, and its
    shutdown claims no deregistration."""
    upstream = ("--upstream", f"svc=127.0.0.1:{free_port()}")
    with sidecar(tmp_path, f"sqlite://{tmp_path / 'r.db'}", None, *upstream, service="client") as car:
        status = car.status()
        assert (status["role"], status["weight"], status["app"]) == ("consumer-only", None, None)
        body = (await shutdown(car.admin)).json()
    assert (body["registered"], body["deregistered"]) == (False, False), body
