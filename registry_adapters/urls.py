"""The parts of a registry URL that several backends read alike: a list of servers and the
query's options. Each backend still says in its own words what it expects (its usage line).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import SplitResult, parse_qs

from registry_adapters.base import RegistryURLError

# HOST or [IPv6], then :PORT or nothing; a user, a path or an empty entry is no host.
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(\d{1,5}))?$")


class BadHost(ValueError):
    """One entry of a host list is no HOST[:PORT]."""

    def __init__(self, entry: str) -> None:
        super().__init__(entry)
        self.entry = entry


def host_list(netloc: str, default_port: int) -> list[str]:
    """`HOST[:PORT],HOST[:PORT]...` as `HOST:PORT` strings (an IPv6 host kept in brackets);
    `BadHost` for the first entry that is none."""
    hosts = []
    for entry in netloc.split(","):
        match = _HOST.match(entry.strip())
        port = int(match[2]) if match and match[2] else default_port
        if not match or not 1 <= port <= 65535:
            raise BadHost(entry)
        hosts.append(f"{match[1]}:{port}")
    return hosts


def query_options(
    parts: SplitResult,
    shown: str,
    known: Sequence[str],
    unknown: str = "unknown parameter(s) {names}, only {known}",
) -> dict[str, str]:
    """The query's options, the last value of each; `RegistryURLError` for any not `known`
    (`unknown` is the message, filled with their `names` and the `known` ones)."""
    query = parse_qs(parts.query, keep_blank_values=True)
    if names := sorted(set(query) - set(known)):
        message = unknown.format(names=names, known=", ".join(f"{name}=" for name in known))
        raise RegistryURLError(f"registry URL {shown!r}: {message}")
    return {name: values[-1] for name, values in query.items()}
