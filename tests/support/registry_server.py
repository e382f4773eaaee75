"""What the outage tests need from a registry server of their own: its URL, stop and start."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import pytest


class RegistryServer(Protocol):
    """A real registry server (Consul agent, etcd member) that a test may stop and start again."""

    @property
    def url(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


def live_registry_url(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> str:
    """The URL of a live registry of `kind`: an SQLite file in `tmp_path`, else the session's
    server of that kind (conftest's `consul_agent`, `etcd_server`, ... fixtures)."""
    if kind == "sqlite":
        return f"sqlite://{tmp_path / 'registry.db'}"
    server: RegistryServer = request.getfixturevalue("consul_agent" if kind == "consul" else f"{kind}_server")
    return server.url
