"""h2spec, the HTTP/2 conformance suite, against both listeners: a provider sidecar in front of
an h2c app (nghttpd) and in front of an HTTP/1.1 app (translated), and a consumer sidecar's
upstream listener. Every case passes but the one the README names: an invalid connection
preface, which on a port that serves HTTP/1.1 too is an HTTP/1.1 request (answered 400, then
closed) rather than an HTTP/2 connection error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.h2spec import run_h2spec
from tests.support.nghttpd import Nghttpd
from tests.support.ports import free_port
from tests.support.procs import demo_app, port_of, sidecar, sidecar_in_front, wait_for

# Sent "INVALID CONNECTION PREFACE": the same port serves HTTP/1.1, which reads it as a request.
EXPECTED_FAILURES = ["http2/3.5/2"]


@pytest.fixture(params=["provider-h2c-app", "provider-http1-app", "consumer"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[int]:
    """The port of one of the sidecar's HTTP/2 listeners, with an app behind it."""
    registry = f"sqlite://{tmp_path / 'registry.db'}"
    with ExitStack() as stack:
        if request.param == "provider-http1-app":
            app = stack.enter_context(demo_app(tmp_path))
            car = stack.enter_context(sidecar(tmp_path, registry, app, "--app-health", ""))
            yield port_of(car)
            return
        nghttpd = stack.enter_context(Nghttpd(tmp_path / "nghttpd"))
        car = stack.enter_context(sidecar_in_front(tmp_path, registry, nghttpd.url, "--app-health", ""))
        if request.param == "provider-h2c-app":
            yield port_of(car)
            return
        port = free_port()
        consumer = stack.enter_context(
            sidecar(tmp_path, registry, None, "--upstream", f"svc=127.0.0.1:{port}", service="client")
        )
        wait_for(lambda: len(consumer.status()["upstreams"]["svc"]["instances"]) == 1, what="the provider")
        yield port


def test_h2spec_passes_but_the_named_cases(listener: int) -> None:
    """Every h2spec case passes against the listener, but those the README names and explains."""
    report = run_h2spec("127.0.0.1", listener)
    assert report.passed, report.output[-2000:]
    assert report.failed_ids == EXPECTED_FAILURES, report.summary()
