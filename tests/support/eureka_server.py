"""A real Eureka server (Spring Cloud Netflix, built by `make tools` from interop/eureka-server),
on a free loopback port, for the registry tests.

Each test states the server settings it runs with. Those of `TEST_SETTINGS` make a server show
a change at once and expire a dead instance within seconds (reads from the read-write cache,
the eviction timer every second, no self-preservation); `DEFAULT_SETTINGS` keeps Eureka's own
defaults but the read cache (self-preservation on, eviction every 60 s), for the tests of what a
production server does. A Eureka server keeps its registry in memory: `stop()` then `start()` is
a server that lost every instance, on the same port.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tests.support.interop import peer_binary
from tests.support.ports import free_port
from tests.support.server_process import ServerProcess

# A read is served from the read-write cache, which every write invalidates: without this a
# change shows after the read-only cache's next refresh, up to 30 s (what production servers do).
FRESH_READS = ("--eureka.server.use-read-only-response-cache=false",)
DEFAULT_SETTINGS: tuple[str, ...] = FRESH_READS
TEST_SETTINGS = (
    *FRESH_READS,
    "--eureka.server.enable-self-preservation=false",
    "--eureka.server.eviction-interval-timer-in-ms=1000",
)


class EurekaServer(ServerProcess):
    """A standalone Eureka server bound to 127.0.0.1, with `settings` (Spring properties)."""

    name = "eureka"
    # A Spring Boot JVM: seconds on an idle machine, ten times that on a loaded one.
    startup_timeout = 120.0

    def __init__(self, workdir: Path, settings: Sequence[str] = TEST_SETTINGS) -> None:
        super().__init__(workdir)
        self._binary = peer_binary("eureka-server")
        self._settings = list(settings)
        self.port = free_port()

    @property
    def http(self) -> str:
        """Its service URL, what a Eureka client is given."""
        return f"http://127.0.0.1:{self.port}/eureka"

    @property
    def url(self) -> str:
        return f"eureka://127.0.0.1:{self.port}/eureka"

    def _argv(self) -> list[str]:
        return [str(self._binary), f"--server.port={self.port}", *self._settings]

    def _ready(self) -> bool:
        request = urllib.request.Request(f"{self.http}/apps", headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=2.0) as response:
            return "applications" in json.load(response)
