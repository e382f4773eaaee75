"""Service registry backends behind one protocol (see `base`)."""

from registry_adapters.base import (
    BACKENDS,
    Instance,
    Registry,
    RegistryClosed,
    RegistryError,
    RegistryRejected,
    RegistryUnavailable,
    RegistryURLError,
    open_registry,
)

__all__ = [
    "BACKENDS",
    "Instance",
    "Registry",
    "RegistryClosed",
    "RegistryError",
    "RegistryRejected",
    "RegistryURLError",
    "RegistryUnavailable",
    "open_registry",
]
