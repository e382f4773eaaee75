"""What the outage tests need from a registry server of their own: its URL, stop and start."""

from __future__ import annotations

from typing import Protocol


class RegistryServer(Protocol):
    """A real registry server (Consul agent, etcd member) that a test may stop and start again."""

    @property
    def url(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...
