"""The data path compiled by mypyc (setup.py, sidecar/compiled.py), and its pure-Python fallback.

`make test` compiles the data path in place first (scripts/compile-data-path.sh) and runs the
whole suite on it, as a wheel installs it; a machine without mypy or a C compiler runs the same
modules from source. Both are checked here with real sidecars: the one the suite runs says it is
compiled (under `make test`, which sets GRACEFUL_SIDECAR_EXPECT_COMPILED), and a copy of the
sources without any extension carries HTTP/1.1 and HTTP/2 requests alike.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import httpx
import pytest

from sidecar import compiled
from sidecar.demo.fleet import sidecar_argv
from sidecar.demo.ports import free_port
from tests.support.procs import demo_app, stop_process, wait_for

ROOT = Path(__file__).resolve().parent.parent


def data_path_line(log: str) -> str:
    """What a sidecar's JSON log says of its data path at start."""
    for line in log.splitlines():
        if line.startswith("{") and json.loads(line)["msg"].startswith("data path: "):
            return str(json.loads(line)["msg"])
    raise AssertionError(f"no 'data path:' line in the log:\n{log[-2000:]}")


def test_every_module_of_the_data_path_is_named() -> None:
    """SOURCES finds the modules it names, packages whole (the HTTP/2 layer inside sidecar.http)."""
    names = compiled.modules()
    assert "sidecar.http" in names
    assert "sidecar.http.h2c.connection" in names
    assert "sidecar.provider.inbound" in names
    assert "sidecar.app.runtime" not in names
    assert len(names) == len(set(names))


def test_the_build_requires_what_mypyc_checks_against() -> None:
    """The build requirements repeat the runtime dependencies (pyproject.toml cannot derive one
    list from the other): mypyc checks the sources against the typed libraries they import, and
    in pip's isolated build one missing makes the build pure Python. Only those mypy is told not
    to look for ([tool.mypy] overrides: kazoo, consul) may be left out."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower() for requirement in requirements}

    runtime = names(pyproject["project"]["dependencies"]) - {"kazoo", "py-consul"}
    assert runtime <= names(pyproject["build-system"]["requires"])


@pytest.mark.skipif(
    os.environ.get("GRACEFUL_SIDECAR_EXPECT_COMPILED") != "1",
    reason="run by `make test`, which compiles the data path first",
)
def test_the_suite_runs_the_compiled_data_path(tmp_path: Path) -> None:
    """Under `make test` every module of the data path is a C extension, in this process and in a
    sidecar started from another directory than the repository's (as `.venv/bin/graceful-sidecar`
    is run: the modules' shared library is found through the venv, not the working directory)."""
    assert compiled.described().startswith("compiled")
    line = serve_both(tmp_path, cwd=tmp_path)
    assert line == f"data path: compiled ({len(compiled.modules())} modules, mypyc)"


def test_the_pure_python_fallback_carries_http1_and_http2(tmp_path: Path) -> None:
    """A copy of the sources with no extension in it (a build without a compiler) runs the data
    path from source: it says so, and proxies an HTTP/1.1 request and an h2c one to the app."""
    source = tmp_path / "src"
    for package in ("sidecar", "registry_adapters"):
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("*.so", "__pycache__")
        )
    assert serve_both(tmp_path, cwd=source).startswith("data path: pure Python")


def serve_both(tmp_path: Path, cwd: Path) -> str:
    """A provider sidecar run as `python -m sidecar` from `cwd` in front of the demo app, asked
    once over HTTP/1.1 and once over h2c; returns what its log said of its data path. It must
    answer both, and exit 0 on SIGTERM."""
    admin, listen = free_port(), free_port()
    log = tmp_path / "sidecar.log"
    with demo_app(tmp_path) as app, open(log, "ab") as out:
        argv = sidecar_argv(f"sqlite://{tmp_path}/reg.db", admin, "--service", "svc")
        argv += ["--listen", f"127.0.0.1:{listen}", "--app", app.url]
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_for(
                lambda: (
                    httpx.get(f"http://127.0.0.1:{admin}/ready", timeout=5, verify=False).status_code == 200
                ),
                what="the sidecar to be ready",
            )
            one = httpx.get(f"http://127.0.0.1:{listen}/work", timeout=5, verify=False)
            with httpx.Client(http1=False, http2=True, timeout=5, verify=False) as client:
                two = client.get(f"http://127.0.0.1:{listen}/work")
        finally:
            stop_process(proc)
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert (one.status_code, one.http_version) == (200, "HTTP/1.1")
    assert (two.status_code, two.http_version) == (200, "HTTP/2")
    assert one.json() == two.json() == {"instance": one.json()["instance"], "ms": 0}
    return data_path_line(log.read_text())
