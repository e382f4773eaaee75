"""The README stays true to the code: every option, environment variable and metric is
documented, and the Quick start is exactly the two commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sidecar.config import OPTIONS, Option
from sidecar.metrics import Metrics

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.mark.parametrize("option", OPTIONS, ids=[option.name for option in OPTIONS])
def test_every_option_is_documented(option: Option) -> None:
    """Each option's flag and SIDECAR_* name appear in the configuration table."""
    assert f"| `--{option.name}" in README
    assert f"`{option.env}`" in README


def test_every_metric_is_documented() -> None:
    """Each metric the sidecar exports has a row in the metrics table."""
    for metric in Metrics().registry.collect():
        shown = f"{metric.name}_total" if metric.type == "counter" else metric.name
        assert f"`{shown}" in README, shown


def test_quick_start_is_two_commands() -> None:
    """The Quick start block is exactly `make demo` and `make test`."""
    block = re.search(r"## Quick start\s+```\n(.*?)```", README, re.S)
    assert block is not None
    assert block.group(1).split("\n")[:-1] == ["make demo", "make test"]
