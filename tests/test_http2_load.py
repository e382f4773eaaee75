"""HTTP/2 under load, black-box: h2load (nghttp2's load generator) through a consumer sidecar and
a provider sidecar to nghttpd, with more streams in flight than one connection may carry (each
sidecar advertises 100): every stream is answered 2xx, none refused or lost.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.support.nghttpd import Nghttpd
from tests.support.ports import free_port
from tests.support.procs import sidecar, sidecar_in_front, wait_for

STREAMS = 6000


def test_320_concurrent_streams_through_both_sidecars_all_answered(tmp_path: Path) -> None:
    """32 connections x 10 streams through both sidecars: all 2xx, though the consumer must
    spread them over several connections to the provider and wait for room on them."""
    h2load = shutil.which("h2load")
    assert h2load, "h2load not found: `make tools` installs it (scripts/install-nghttp2.sh)"
    registry = f"sqlite://{tmp_path / 'registry.db'}"
    port = free_port()
    with (
        Nghttpd(tmp_path / "nghttpd") as app,
        sidecar_in_front(tmp_path, registry, app.url, "--app-health", ""),
        sidecar(
            tmp_path, registry, None, "--upstream", f"svc=127.0.0.1:{port}", service="client"
        ) as consumer,
    ):
        wait_for(lambda: len(consumer.status()["upstreams"]["svc"]["instances"]) == 1, what="the provider")
        argv = [h2load, "-c", "32", "-m", "10", "-n", str(STREAMS), f"http://127.0.0.1:{port}/index.html"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    assert codes is not None, out
    assert [int(n) for n in codes.groups()] == [STREAMS, 0, 0, 0], out
