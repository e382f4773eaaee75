"""The layout shows the architecture, and this test keeps it true: every import points down.

    app                          the shell on top: cli, runtime, admin API
    provider   consumer          side by side, neither imports the other
    http                         the HTTP/1.1 core both sides forward with
    exec  kubernetes  foundations (config, options, errors, metrics, compiled)  registry_adapters
    protocol                     the wire contract; imports nothing of ours

The registry adapters sit over protocol, not beside it: the keys of the sidecar_* metadata are
protocol's, and a layout such as Dubbo's translates them into its ecosystem's own parameters.

`demo` uses the rest, and nothing uses it but the `demo` command of the CLI. Imports are read
from the source (inside functions too), so a lazy import cannot slip past.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sidecar", "registry_adapters")
FOUNDATIONS = {"sidecar.compiled", "sidecar.config", "sidecar.errors", "sidecar.metrics", "sidecar.options"}

# part -> the parts it may import (its own included)
ALLOWED: dict[str, set[str]] = {
    "protocol": {"protocol"},
    "foundations": {"foundations", "protocol"},
    "registry": {"registry", "protocol"},
    "exec": {"exec", "foundations", "protocol"},
    "kubernetes": {"kubernetes", "foundations"},
    "http": {"http", "foundations", "protocol"},
    "provider": {"provider", "http", "foundations", "protocol", "registry"},
    "consumer": {"consumer", "http", "foundations", "protocol", "registry"},
    "app": {
        "app",
        "provider",
        "consumer",
        "http",
        "exec",
        "kubernetes",
        "foundations",
        "protocol",
        "registry",
    },
    "demo": {"demo", "app", "provider", "consumer", "http", "exec", "kubernetes", "foundations"}
    | {"protocol", "registry"},
}
# The one import that goes up on purpose: `graceful-sidecar demo` runs the demo.
EXCEPTIONS = {("sidecar.app.cli", "sidecar.demo.run")}


def part_of(module: str) -> str:
    """The part a module of ours belongs to; a module in no part fails the test."""
    if module.startswith("registry_adapters"):
        return "registry"
    if module in FOUNDATIONS:
        return "foundations"
    if module in ("sidecar", "sidecar.__main__"):
        return "app"
    name = module.split(".")
    if len(name) >= 2 and name[1] in ALLOWED:
        return name[1]
    raise AssertionError(f"{module} is in no part of the layout: put it in one of sidecar/{sorted(ALLOWED)}")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports_of(path: Path) -> set[str]:
    """The modules of ours that `path` imports, anywhere in it."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from sidecar.protocol import headers` imports the module sidecar.protocol.headers
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    ours = modules()
    return {name for name in names if name in ours}


def test_every_module_is_in_a_part() -> None:
    for name in modules():
        part_of(name)


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_point_down(module: str) -> None:
    part = part_of(module)
    wrong = [
        f"{module} ({part}) imports {target} ({part_of(target)})"
        for target in sorted(imports_of(modules()[module]))
        if part_of(target) not in ALLOWED[part] and (module, target) not in EXCEPTIONS
    ]
    assert not wrong, "imports against the layout:\n" + "\n".join(wrong)


def test_the_sides_stay_apart_and_protocol_stays_at_the_bottom() -> None:
    """The rules that matter most, stated on their own so that editing the table shows."""
    assert "provider" not in ALLOWED["consumer"]
    assert "consumer" not in ALLOWED["provider"]
    assert ALLOWED["protocol"] == {"protocol"}
    assert all("demo" not in allowed for part, allowed in ALLOWED.items() if part != "demo")


def test_the_checker_sees_a_lazy_import(tmp_path: Path) -> None:
    """An import inside a function counts: the checker reads it like a top-level one."""
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    from sidecar.provider import lifecycle\n    import sidecar.demo.run\n")
    assert imports_of(source) == {"sidecar.provider", "sidecar.provider.lifecycle", "sidecar.demo.run"}
