"""The servers of a registry spoken to over plain HTTP (Eureka, Nacos): every call goes first to
the server that answered last, then to the others, and what failed is told in the one form of
registry errors (`reasons.told`).

An answer below 500 ends the call: a success is handed back, and so is a 404 when the caller
takes "not found" as an answer (a renewal of an instance the server forgot); any other 4xx is
`RegistryRejected`, in words the backend's `refusal` finds. No answer, or a 5xx, from every
server is `RegistryUnavailable`, with the reason (or each server's, when they differ).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from registry_adapters.base import RegistryRejected, RegistryUnavailable
from registry_adapters.reasons import reason, told


def status_line(response: httpx.Response) -> str:
    """The default refusal: `404 Not Found`."""
    return f"{response.status_code} {response.reason_phrase}".strip()


class HttpServers:
    """`servers`: base URLs (`http://host:port/path`); `shown`: how `where` names each."""

    def __init__(
        self,
        kind: str,
        servers: list[str],
        *,
        timeout: float,
        shown: Callable[[str], str] = lambda server: server.removeprefix("http://"),
        refusal: Callable[[httpx.Response], str] = status_line,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.servers = servers
        self.where = f"{kind} at " + ",".join(shown(server) for server in servers)
        self._shown = shown
        self._refusal = refusal
        self._timeout = timeout
        self._headers = headers or {}
        self._current = 0  # the server that answered last
        self._client: httpx.AsyncClient | None = None

    async def call(
        self, method: str, path: str, what: str, *, missing_ok: bool = False, **request: Any
    ) -> httpx.Response:
        """`method` `path` (`request`: httpx's params, json, data) on the servers in turn."""
        failures: list[tuple[str, str]] = []
        others = (i for i in range(len(self.servers)) if i != self._current)
        for i in [self._current, *others]:
            server = self.servers[i]
            try:
                response = await self._http().request(method, server + path, **request)
            except httpx.HTTPError as exc:
                failures.append((server, reason(exc, self._timeout)))
                continue
            if response.status_code >= 500:
                failures.append((server, status_line(response)))
                continue
            self._current = i
            if response.is_success or (missing_ok and response.status_code == 404):
                return response
            raise RegistryRejected(told(self.where, self._refusal(response), what))
        reasons = {why for _, why in failures}
        if len(reasons) == 1:
            raise RegistryUnavailable(told(self.where, reasons.pop(), what))
        each = "; ".join(f"{self._shown(server)}: {why}" for server, why in failures)
        raise RegistryUnavailable(told(self.where, each, what))

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout, trust_env=False, headers=self._headers)
        return self._client
