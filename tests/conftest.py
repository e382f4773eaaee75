"""Shared fixtures. Registries are real: SQLite files in tmp_path, Consul agents from .tools/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.consul_agent import ConsulAgent

# -- registries -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def consul_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsulAgent]:
    """One Consul dev agent for the whole session; tests keep apart by unique service names."""
    with ConsulAgent(tmp_path_factory.mktemp("consul")) as agent:
        yield agent


@pytest.fixture
def fresh_consul(tmp_path: Path) -> Iterator[ConsulAgent]:
    """A Consul dev agent of this test's own, which the test may stop and start again."""
    with ConsulAgent(tmp_path / "consul") as agent:
        yield agent


@pytest.fixture(params=["sqlite", pytest.param("consul", marks=pytest.mark.consul)])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a live registry of each kind (narrow it with indirect parametrization)."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'registry.db'}"
    agent: ConsulAgent = request.getfixturevalue("consul_agent")
    return agent.url
