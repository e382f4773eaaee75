"""The command line says what is wrong, and what it would take, in one line: a mistyped flag gets
the nearest real one, `exec` without `--` says where the command goes, an explicit SQLite file in
a directory that does not exist is an error rather than a new registry; `--help` shows every
option's default and environment variable; `shutdown --admin` takes the admin URL as well as
HOST:PORT. All on the real command, as a process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.app.cli import default_text
from sidecar.config import OPTIONS
from tests.support.procs import sidecar

DEADLINE_SECONDS = 30


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *argv],
        capture_output=True,
        text=True,
        timeout=DEADLINE_SECONDS,
        check=False,
    )


MISTAKES = {
    "mistyped-flag": (
        ["run", "--service", "s", "--listne", "127.0.0.1:1"],
        "--listne; did you mean --listen?",
    ),
    "mistyped-flag-with-value": (
        ["run", "--service", "s", "--drain-timout=5"],
        "unknown option --drain-timout; did you mean --drain-timeout?",
    ),
    "mistyped-shutdown-flag": (["shutdown", "--tokn", "t"], "unknown option --tokn; did you mean --token?"),
    "exec-without-dashes": (["exec", "--service", "s", "python3", "app.py"], "put '--' before the command"),
    "sqlite-dir-missing": (
        ["run", "--service", "s", "--registry", "sqlite:///nowhere-{n}/r.db"],
        "the directory /nowhere-{n} does not exist",
    ),
    "shutdown-admin-not-http": (
        ["shutdown", "--admin", "ftp://127.0.0.1:1"],
        "expected HOST:PORT or http://HOST:PORT",
    ),
}


@pytest.mark.parametrize(("argv", "message"), list(MISTAKES.values()), ids=list(MISTAKES))
def test_a_mistake_is_one_line_and_exit_2(argv: list[str], message: str, tmp_path: Path) -> None:
    """Each mistake exits 2 with one line on stderr that names it (and the fix), no traceback."""
    unique = tmp_path.name  # a directory that surely does not exist
    done = cli(*(arg.replace("{n}", unique) for arg in argv))
    assert done.returncode == 2, done
    assert message.replace("{n}", unique) in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_an_existing_sqlite_directory_is_fine(tmp_path: Path) -> None:
    """The directory check refuses only what is missing: a sidecar on a new file in an existing
    directory starts, on that registry."""
    with sidecar(tmp_path, f"sqlite://{tmp_path / 'fresh.db'}", None, wait="live") as car:
        assert car.status()["registry"]["kind"] == "sqlite"


@pytest.mark.parametrize("command", ["run", "exec"])
def test_help_shows_every_default_and_environment_variable(command: str) -> None:
    """`--help` names, for every option, its environment variable and, where it has one, its
    default as a user would type it."""
    done = cli(command, "--help")
    assert done.returncode == 0, done.stderr
    text = re.sub(r"\s+", " ", done.stdout)  # argparse wraps lines anywhere
    for option in OPTIONS:
        assert f"[env {option.env}]" in text, option.flag
        assert default_text(option).strip() in text, option.flag
    assert "(default 127.0.0.1:16688)" in text
    assert "(default /health)" in text
    assert "(default 25)" in text  # --drain-timeout


def test_shutdown_help_names_its_defaults_and_variables() -> None:
    """`shutdown --help` documents --admin and --token, with the default and the variables."""
    text = re.sub(r"\s+", " ", cli("shutdown", "--help").stdout)
    assert "(default 127.0.0.1:16688) [env SIDECAR_ADMIN]" in text
    assert "[env SIDECAR_TOKEN]" in text


def test_shutdown_takes_the_admin_url(tmp_path: Path) -> None:
    """`shutdown --admin http://HOST:PORT` (the form --advertise-admin takes) drains and exits 0."""
    with sidecar(tmp_path, f"sqlite://{tmp_path / 'r.db'}", None, wait="live") as car:
        done = cli("shutdown", "--admin", car.admin)
        assert done.returncode == 0, done
        assert '"drained": true' in done.stdout
