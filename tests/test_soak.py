"""The chaos soak (bench/soak.py), short: about 60 s of load with one of each fault, fixed seed.

`make figures` runs it (`-m soak`), not `make test`: its classification of failures is
sensitive to the machine's load, which the whole suite raises.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.consul_agent import CONSUL_BINARY

SOAK = Path(__file__).resolve().parents[1] / "bench" / "soak.py"
SEED = 7
# One minute of actions, then up to 30 s for registry TTLs and tables; starting the fleet and
# stopping it take seconds more on a loaded machine.
TIMEOUT_S = 420

pytestmark = [pytest.mark.soak, pytest.mark.consul]


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not CONSUL_BINARY.is_file():
        pytest.skip("no Consul binary: run `make tools`")
    workdir = tmp_path_factory.mktemp("soak")
    argv = [
        sys.executable,
        str(SOAK),
        "--minutes",
        "1",
        "--seed",
        str(SEED),
        "--workdir",
        str(workdir),
        "--json",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr[-3000:]
    assert lines[-1].startswith("{"), done.stdout[-3000:] + done.stderr[-3000:]
    result: dict[str, Any] = json.loads(lines[-1])
    result["printed"] = "\n".join(lines[:-1])
    return result


def test_soak_every_fault_happened(soak: dict[str, Any]) -> None:
    """The short soak injected each fault once, under load through both consumer sidecars."""
    assert set(soak["events"]) >= {
        "roll",
        "consul",
        "crash",
        "app-kill",
        "consumer-restart",
        "slow",
        "frozen",
    }
    assert soak["by_method"]["POST"] > 500, soak["printed"]
    assert soak["by_method"]["GET"] > 500, soak["printed"]


def test_soak_leaves_no_stale_entry_and_no_leak(soak: dict[str, Any]) -> None:
    """At the end: the registry and the consumers' tables hold exactly the live providers, and
    the sidecars alive since the baseline kept RSS and open descriptors within 10%."""
    assert soak["stale_entries"] == [], soak["printed"]
    assert soak["usage"], soak["printed"]
    assert all(usage["ok"] for usage in soak["usage"].values()), soak["printed"]


def test_soak_failures_are_explained(soak: dict[str, Any]) -> None:
    """Every failed request is one the design accepts: in flight on (or sent a moment after) a
    SIGKILL of its instance or app, or never sent because consumer B was down restarting."""
    assert soak["unexplained"] == 0, soak["printed"]
    assert soak["failed"] == soak["kill_related"] + soak["never_sent"], soak["printed"]
