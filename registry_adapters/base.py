"""The registry protocol every backend implements, the values it exchanges, and its errors.

A backend keeps an instance alive on its own once registered (a TTL check it keeps passing in
Consul, a heartbeat row in SQLite, later a lease in etcd or an ephemeral node in ZooKeeper), so
that a sidecar killed with SIGKILL disappears from the registry by itself. The sidecar only says
what it wants published; how the backend keeps it true is the backend's business.

Backends are named in a URL (`consul://host:8500`, `sqlite:///path.db`) and imported lazily
through `BACKENDS`, so that a missing optional dependency only matters to whoever uses it.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Protocol, Self, runtime_checkable
from urllib.parse import SplitResult, urlsplit

from registry_adapters.reasons import shown_url


class RegistryError(Exception):
    """Base of every error a registry backend raises."""


class RegistryURLError(RegistryError, ValueError):
    """The registry URL cannot be used: unknown scheme, missing host or path, bad port."""


class RegistryUnavailable(RegistryError):
    """The registry could not be reached or did not answer in time. Retrying may help."""


class RegistryRejected(RegistryError):
    """The registry answered, but refused the operation (bad request, permission)."""


class RegistryClosed(RegistryError):
    """The registry object was closed: it takes no more calls. Retrying will not help."""


@dataclass(frozen=True, slots=True)
class Instance:
    """One instance of a service as published in a registry."""

    service: str
    instance_id: str
    host: str
    port: int
    weight: int = 100
    meta: Mapping[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """host:port, with an IPv6 host in brackets (usable in a URL)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def with_weight(self, weight: int) -> Instance:
        return replace(self, weight=weight)


@runtime_checkable
class Registry(Protocol):
    """What the sidecar needs from a service registry.

    Every method may raise `RegistryUnavailable` (retry later) or `RegistryRejected`, and
    every method but `close` raises `RegistryClosed` once the registry is closed.
    """

    kind: str
    # Where the registry is, as messages name it, without secrets: "consul at 127.0.0.1:8500".
    where: str

    async def register(self, instance: Instance) -> None:
        """Publish `instance` (create or replace) and keep it alive until deregistered."""

    async def set_weight(self, instance_id: str, weight: int) -> None:
        """Change the registry weight of a registered instance (0 takes it out of rotation)."""

    async def set_offline(self, instance_id: str) -> None:
        """Take the instance out of rotation at once, before it is deregistered."""

    async def deregister(self, instance_id: str) -> None:
        """Remove the instance and stop keeping it alive. Removing an absent one is no error."""

    def watch(self, service: str) -> AsyncGenerator[list[Instance], None]:
        """Yield the instances of `service` that should receive traffic: first the current
        list, then a new list each time it changes. Raises `RegistryUnavailable` when the
        registry cannot be read; the caller decides whether to watch again. Close it with
        `contextlib.aclosing` when leaving early."""
        ...

    async def services(self) -> list[str]:
        """The names of the services that have instances in the registry, sorted: what a
        consumer that finds no instance of the service it wants is shown (`order` vs `orders`).
        A service whose instances all expired or were deregistered is left out; one whose
        instances are all out of rotation may be (where taking one out deletes it)."""
        ...

    async def close(self) -> None:
        """Release connections and background tasks. Registered instances are left to expire."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Backend:
    """What every backend shares: `async with backend:` closes it on the way out, and once
    `close()` has set `_closed`, `_check_open()` refuses every call with `RegistryClosed`."""

    _closed = False

    async def close(self) -> None:
        raise NotImplementedError

    def _check_open(self) -> None:
        if self._closed:
            raise RegistryClosed(f"{type(self).__name__} is closed")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


# name -> "module:Class", imported only when used.
BACKENDS: dict[str, str] = {
    "consul": "registry_adapters.consul:ConsulRegistry",
    "etcd": "registry_adapters.etcd:EtcdRegistry",
    "eureka": "registry_adapters.eureka:EurekaRegistry",
    "nacos": "registry_adapters.nacos:NacosRegistry",
    "sqlite": "registry_adapters.sqlite:SQLiteRegistry",
    "zookeeper": "registry_adapters.zookeeper:ZooKeeperRegistry",
}


def open_registry(url: str) -> Registry:
    """Build the backend named by `url`'s scheme. Use it as an async context manager."""
    parts: SplitResult = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in BACKENDS:
        hint = difflib.get_close_matches(scheme, BACKENDS, n=1)
        did_you_mean = f"; did you mean {hint[0]}://?" if hint else ""
        known = ", ".join(f"{name}://" for name in sorted(BACKENDS))
        raise RegistryURLError(
            f"unknown registry {shown_url(url)!r}: scheme must be one of {known}{did_you_mean}"
        )
    module_name, _, class_name = BACKENDS[scheme].partition(":")
    backend = getattr(importlib.import_module(module_name), class_name)
    registry: Registry = backend.from_url(parts)
    return registry
