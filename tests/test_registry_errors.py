"""Registry errors read as `consul at 127.0.0.1:8501: connection refused (register)`: where, a few
words of why, the operation; never a library's repr, never a token (issue 19). Each backend is
pointed at a closed port of 127.0.0.1 (or, SQLite, at a file it cannot open), through the adapter,
and one through a real sidecar, whose /status, log and start-up failure line say it so."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from kazoo.exceptions import ConnectionLoss, SessionExpiredError

from registry_adapters import Instance, Registry, RegistryError, open_registry
from registry_adapters.kazoo_bridge import said
from registry_adapters.reasons import reason, shown_url
from registry_adapters.zookeeper import ZooKeeperRegistry
from tests.support.ports import free_port
from tests.support.procs import demo_app, sidecar, wait_for

TOKEN = "s3cret-acl-token"
# A ZooKeeper session that cannot come is given up after this (5 s by default): the test's wait.
ZOOKEEPER_CALL_TIMEOUT_S = 1.0
# A bound on a noisy shared machine for what takes milliseconds here.
DEADLINE_SECONDS = 15.0

INSTANCE = Instance("svc", "svc-1", "127.0.0.1", 8080)


def nowhere(kind: str, ports: list[int]) -> tuple[Registry, str]:
    """The registry `kind` at closed ports of 127.0.0.1, and how its errors name it."""
    hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
    if kind == "consul":
        return open_registry(f"consul://{hosts}?token={TOKEN}"), f"consul at {hosts}"
    if kind == "zookeeper":
        url = urlsplit(f"zookeeper://{hosts}/app")
        return ZooKeeperRegistry.from_url(
            url, call_timeout=ZOOKEEPER_CALL_TIMEOUT_S
        ), f"zookeeper at {hosts}/app"
    return open_registry(f"etcd://{hosts}"), f"etcd at {hosts}"


async def error_of(call: Awaitable[object]) -> str:
    with pytest.raises(RegistryError) as caught:
        await call
    return str(caught.value)


@pytest.mark.parametrize(
    ("kind", "endpoints", "operations"),
    [
        ("consul", 1, {"register": "register", "watch": "watch", "services": "services"}),
        ("etcd", 1, {"register": "lease/grant", "watch": "kv/range", "services": "kv/range"}),
        ("etcd", 2, {"register": "lease/grant", "services": "kv/range"}),
        ("zookeeper", 1, {"register": "publish", "services": "services"}),
    ],
)
async def test_a_closed_port_reads_connection_refused(
    kind: str, endpoints: int, operations: dict[str, str]
) -> None:
    """Nothing listens: each call's error is exactly `KIND at HOSTS: connection refused (OP)`,
    with no exception repr and no token in it."""
    registry, where = nowhere(kind, [free_port() for _ in range(endpoints)])
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "register": lambda: registry.register(INSTANCE),
        "watch": lambda: anext(registry.watch("svc")),
        "services": lambda: registry.services(),
    }
    async with registry:
        for call, operation in operations.items():
            message = await error_of(calls[call]())
            assert message == f"{where}: connection refused ({operation})"
            assert "Error(" not in message
            assert TOKEN not in message


async def test_a_sqlite_file_that_cannot_be_opened(tmp_path: Path) -> None:
    """A SQLite registry whose file is a directory: `sqlite at PATH: unable to open database file
    (write register)`."""
    path = tmp_path / "a-directory.db"
    path.mkdir()
    async with open_registry(f"sqlite://{path}") as registry:
        message = await error_of(registry.register(INSTANCE))
        assert message == f"sqlite at {path}: unable to open database file (write register)"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (httpx.ConnectError("All connection attempts failed"), "connection refused"),  # cause below
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "host not found"),
        (TimeoutError(), "no answer within 5 s"),
        (httpx.ReadTimeout(""), "no answer within 5 s"),
        (OSError(113, "No route to host"), "no route to host"),
        (ValueError("Unknown check 'x'"), "Unknown check 'x'"),
        (ValueError("ConnectionKey(host='h', port=1)"), "value"),  # a repr: the class name instead
        (KeyError(), "key"),
        (RuntimeError("GET http://h/v1?token=abc failed"), "GET http://h/v1?token=*** failed"),
    ],
)
def test_reasons_are_a_few_readable_words(error: BaseException, expected: str) -> None:
    """reason() finds the errno, the failed name lookup or the timeout down the cause chain;
    else the exception's text if it reads as words (secrets hidden), else its class name."""
    if isinstance(error, httpx.ConnectError):
        error.__cause__ = OSError("All connection attempts failed")
        error.__cause__.__cause__ = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)")
    assert reason(error, 5.0) == expected


def test_kazoo_errors_without_text_are_words() -> None:
    """kazoo's ConnectionLoss and SessionExpiredError, which have no text, read as words."""
    assert (said(ConnectionLoss()), said(SessionExpiredError())) == ("connection lost", "session expired")


def test_urls_are_shown_without_their_token() -> None:
    """A registry URL in a message keeps everything but the token's value."""
    assert shown_url(f"consul://127.0.0.1:8500?token={TOKEN}") == "consul://127.0.0.1:8500?token=***"


def test_a_sidecar_says_it_in_status_and_log_without_the_token(tmp_path: Path) -> None:
    """A provider sidecar whose Consul (with a token in its URL) refuses connections: /status's
    registry.last_error and the log read `consul at 127.0.0.1:PORT: connection refused
    (register)`, and neither holds the token."""
    port = free_port()
    registry = f"consul://127.0.0.1:{port}?token={TOKEN}"
    expected = f"consul at 127.0.0.1:{port}: connection refused (register)"
    with demo_app(tmp_path) as app, sidecar(tmp_path, registry, app, wait="live") as car:
        error = wait_for(lambda: car.status()["registry"]["last_error"], DEADLINE_SECONDS, "an error")
        assert error == expected
        assert expected in car.log()
        assert TOKEN not in car.log()
        assert TOKEN not in httpx.get(f"{car.admin}/status", timeout=5, verify=False).text


def test_a_start_up_failure_line_holds_no_token() -> None:
    """A registry URL the sidecar cannot use: the one line it exits with names the URL without
    its token."""
    argv = ["run", "--service", "s", "--registry", f"consol://127.0.0.1:1?token={TOKEN}"]
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", *argv], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2
    assert "consol://127.0.0.1:1?token=***" in done.stderr
    assert TOKEN not in done.stderr
