"""Bad input to the admin API: each a 4xx with a JSON error that says what was wrong, never a
500, and the sidecar keeps serving."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.support.procs import SidecarProc, demo_app, sidecar

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def car(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProc]:
    """One sidecar for the module, whose --allow excludes loopback: only the token works."""
    tmp_path = tmp_path_factory.mktemp("admin")
    registry = f"sqlite://{tmp_path / 'registry.db'}"
    args = ("--token", TOKEN, "--allow", "192.0.2.0/24", "--quiet-period", "0")
    with demo_app(tmp_path) as app, sidecar(tmp_path, registry, app, *args) as proc:
        yield proc


def assert_json_error(response: httpx.Response, status: int, mentions: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["error"], str)
    assert mentions.lower() in body["error"].lower()


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        (b'{"weight": -1}', "got -1"),
        (b'{"weight": 70000}', "got 70000"),
        (b'{"weight": "abc"}', '"abc"'),
        (b'{"weight": 1.5}', "1.5"),
        (b'{"weight": true}', "true"),
        (b"{}", "weight"),
        (b'{"weight": 5, "extra": 1}', "exactly one key"),
        (b"[5]", "object"),
        (b'{"weight": ', "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"weight": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b"[" * 50_000, "not valid JSON"),  # nested deeper than the parser recurses
    ],
)
def test_bad_weight_bodies(car: SidecarProc, body: bytes, mentions: str) -> None:
    """PUT /weight with a bad body: 400 naming the problem; the weight is unchanged."""
    before = httpx.get(f"{car.admin}/weight", verify=False).json()
    assert_json_error(
        httpx.put(f"{car.admin}/weight", content=body, headers=AUTH, verify=False), 400, mentions
    )
    after = httpx.get(f"{car.admin}/weight", verify=False).json()
    assert (after["current"], after["override"]) == (before["current"], before["override"])


def test_huge_body_is_413(car: SidecarProc) -> None:
    """A 10 MB body: 413 with a JSON error, and the sidecar still answers."""
    response = httpx.put(
        f"{car.admin}/weight", content=b"x" * 10_000_000, headers=AUTH, timeout=30, verify=False
    )
    assert_json_error(response, 413, "too large")
    assert httpx.get(f"{car.admin}/live", verify=False).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/ready", 405),
        ("DELETE", "/status", 405),
        ("PATCH", "/weight", 405),
        ("PUT", "/shutdown", 405),
        ("GET", "/nope", 404),
        ("POST", "/admin/../etc/passwd", 404),
    ],
)
def test_wrong_methods_and_paths(car: SidecarProc, method: str, path: str, status: int) -> None:
    """Wrong methods get 405 and unknown paths 404, both as JSON."""
    assert_json_error(httpx.request(method, f"{car.admin}{path}", headers=AUTH, verify=False), status)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/shutdown", None),
        ("POST", "/shutdown", None),
        ("PUT", "/weight", {"weight": 5}),
        ("DELETE", "/weight", None),
    ],
)
def test_mutating_endpoints_need_allow_or_token(
    car: SidecarProc, method: str, path: str, body: object
) -> None:
    """From an address outside --allow and without the token (or with a wrong one): 403."""
    content = json.dumps(body).encode() if body is not None else None
    url = f"{car.admin}{path}"
    assert_json_error(httpx.request(method, url, content=content, verify=False), 403, "forbidden")
    wrong = {"Authorization": "Bearer wrong"}
    assert_json_error(
        httpx.request(method, url, content=content, headers=wrong, verify=False), 403, "forbidden"
    )
    assert car.status()["phase"] in ("serving", "warming")


def test_undecodable_authorization_header_is_403(car: SidecarProc) -> None:
    """An Authorization header that is not UTF-8 is a wrong token (403), not an error."""
    response = httpx.put(
        f"{car.admin}/weight", json={"weight": 5}, headers={"Authorization": b"Bearer \xff\xfe"}, verify=False
    )
    assert_json_error(response, 403, "forbidden")


def test_token_allows_and_process_still_serves(car: SidecarProc) -> None:
    """With the token, PUT /weight works; after all the bad input the proxy and probes still work."""
    response = httpx.put(f"{car.admin}/weight", json={"weight": 42}, headers=AUTH, verify=False)
    assert response.status_code == 200
    assert response.json()["current"] == 42
    assert httpx.delete(f"{car.admin}/weight", headers=AUTH, verify=False).json()["override"] is None
    assert httpx.get(f"{car.url}/work?ms=1", verify=False).status_code == 200
    assert httpx.get(f"{car.admin}/ready", verify=False).status_code == 200
    assert "sidecar_phase" in httpx.get(f"{car.admin}/metrics", verify=False).text
    assert car.proc.poll() is None
    assert "Traceback" not in car.log()
