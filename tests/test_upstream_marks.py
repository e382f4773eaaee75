"""A consumer sidecar acts on `X-Sidecar-Refused` only on a 503 (issue 17, section 2), black box.

A 200 that carries the mark is a response like any other: relayed as it is, not retried on
another instance (a POST is processed once), and the instance stays in the consumer's table,
neither dropped nor ejected. A provider sidecar strips the marks its app sends
(tests/test_http_framing.py), so to reach a consumer with one, the instances here are RawApps
registered directly (no provider sidecar in between) in a SQLite registry of the module's own.

Two instances of each service, both RawApps, so that a retry elsewhere is seen at the other
app: service `marked` answers 200 with the mark; service `refusing` refuses (503 with the mark)
the first request for each target and answers 200 to the next, the counterpart that shows the
setup sees a retry when there is one. The two services have listeners and tables of their own,
so that the refusing one's ejection touches nothing the other test looks at.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from registry_adapters import Instance
from registry_adapters.sqlite import SQLiteRegistry
from tests.support.ports import free_port
from tests.support.procs import SidecarProc, sidecar, wait_for
from tests.support.raw_app import Link, RawApp, Received
from tests.support.rawhttp import RawConnection, request

# Rows the test publishes outlive the module: nothing keeps them alive, nothing must expire them.
ROW_TTL_SECONDS = 600.0
# A SQLite write takes milliseconds; this bounds a file lock held by someone else.
REGISTER_SECONDS = 30.0
MARKED, REFUSING = "marked", "refusing"
PROCESSED = b"HTTP/1.1 200 OK\r\nX-Sidecar-Refused: %s\r\nContent-Length: 9\r\n\r\nprocessed"
REFUSAL = b"HTTP/1.1 503 Service Unavailable\r\nX-Sidecar-Refused: %s\r\nContent-Length: 7\r\n\r\nrefused"
ACCEPTED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\naccepted"


class RefuseOnce:
    """A reply shared by the apps of one service: the first request for each target gets a
    refusal (503 with X-Sidecar-Refused), any later one 200."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # each RawApp runs on a thread of its own
        self._refused: set[str] = set()

    async def __call__(self, request: Received, link: Link, app: RawApp) -> bool:
        with self._lock:
            first = request.target not in self._refused
            self._refused.add(request.target)
        await link.send(REFUSAL % f"{REFUSING}-{app.port}".encode() if first else ACCEPTED)
        return True


@dataclass
class Marks:
    apps: tuple[RawApp, RawApp]
    consumer: SidecarProc
    ports: dict[str, int]  # service -> the consumer's listener for it

    def table(self, service: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.consumer.status()["upstreams"][service]["instances"]
        return rows

    def received(self, path: str, mark: str) -> list[list[Received]]:
        """Per app, the requests for `path` carrying `mark` it received."""
        return [[r for r in app.of_path(path) if mark in r.target] for app in self.apps]


def publish(path: str, *instances: Instance) -> None:
    """Register `instances` with the project's SQLite adapter, long-lived and without heartbeats."""

    async def register() -> None:
        async with SQLiteRegistry(path, ttl=ROW_TTL_SECONDS) as registry:
            for instance in instances:
                await registry.register(instance)

    asyncio.run(asyncio.wait_for(register(), REGISTER_SECONDS))


@pytest.fixture(scope="module")
def marks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Marks]:
    """Two RawApps, each an instance of `marked` and of `refusing`, and a consumer sidecar with
    a listener for each service that knows both instances of it."""
    tmp_path = tmp_path_factory.mktemp("marks")
    db = tmp_path / "r.db"
    replies = {"/processed": PROCESSED % MARKED.encode(), "/refusing": RefuseOnce()}
    with RawApp(replies) as first, RawApp(replies) as second:
        publish(
            str(db),
            *(
                Instance(service, f"{service}-{n}", "127.0.0.1", app.port)
                for service in (MARKED, REFUSING)
                for n, app in enumerate((first, second), 1)
            ),
        )
        ports = {MARKED: free_port(), REFUSING: free_port()}
        upstreams = [
            arg for name, port in ports.items() for arg in ("--upstream", f"{name}=127.0.0.1:{port}")
        ]
        with sidecar(tmp_path, f"sqlite://{db}", None, *upstreams, service="client") as car:
            setup = Marks((first, second), car, ports)

            def knows_all() -> bool:
                return all(len(setup.table(service)) == 2 for service in ports)

            wait_for(knows_all, what="the consumer to know both instances of each service")
            yield setup


async def post(port: int, target: str, body: bytes) -> tuple[int, bytes, str | None]:
    """POST `body` to `target` on 127.0.0.1:`port`: status, body and X-Sidecar-Refused back."""
    async with await RawConnection.open(port) as conn:
        await conn.send(request("POST", target, body=body))
        response = await conn.response("POST")
    return response.status, response.body, response.header("X-Sidecar-Refused")


# Not retried elsewhere (one app saw the POST), and both instances stay in the table, neither
# dropped nor ejected.
async def test_refused_mark_on_a_200_is_relayed_as_it_is(marks: Marks) -> None:
    """A 200 with X-Sidecar-Refused is relayed as it is, processed once; no instance is dropped."""
    answer = await post(marks.ports[MARKED], "/processed?case=once", b"order-1")
    assert answer == (200, b"processed", MARKED), answer
    at_apps = marks.received("/processed", "once")
    assert sorted(len(requests) for requests in at_apps) == [0, 1], f"processed {at_apps}"
    rows = marks.table(MARKED)
    assert [(row["dropped"], row["ejected"]) for row in rows] == [(False, False)] * 2, rows


# The counterpart, which shows that this setup sees a retry when there is one: each app saw the
# POST once.
async def test_refused_mark_on_a_503_is_retried_elsewhere(marks: Marks) -> None:
    """A 503 with X-Sidecar-Refused is retried on the other instance, whose 200 the client gets."""
    answer = await post(marks.ports[REFUSING], "/refusing?case=retried", b"order-2")
    assert answer == (200, b"accepted", None), answer
    at_apps = marks.received("/refusing", "retried")
    assert [len(requests) for requests in at_apps] == [1, 1], f"received {at_apps}"
