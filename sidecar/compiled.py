"""The data path's modules that a build compiles to C, and whether this process runs them so.

setup.py hands SOURCES to mypyc (mypy's compiler), which turns each module into a C extension
from the same source; Python imports a module's extension before its .py. A build without mypy
or a C compiler leaves them pure Python, which behaves the same for more CPU per request (up to
about twice, on HTTP/2). The sidecar says which in its log when it starts. Standard library
only: setup.py reads this file before anything is installed.
"""

from __future__ import annotations

import importlib
import importlib.machinery
from pathlib import Path

# Packages (each module in them) and modules, as paths from the repository's root.
SOURCES = (
    "sidecar/http",
    "sidecar/provider/inbound.py",
    "sidecar/provider/inflight.py",
    "sidecar/consumer/upstream.py",
    "sidecar/consumer/balancer.py",
    # not consumer/instances.py: its tests set its clocks (module functions) through the module,
    # and compiled code binds its calls to functions when it is built
    "sidecar/protocol/headers.py",
)

ROOT = Path(__file__).resolve().parent.parent


def modules(root: Path = ROOT) -> list[str]:
    """The dotted names of the modules SOURCES names, as found under `root`."""
    names = []
    for source in SOURCES:
        path = root / source
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            parts = file.relative_to(root).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def is_compiled(module: str) -> bool:
    """Whether `module`, imported, came from a C extension (an import that fails raises)."""
    origin = getattr(importlib.import_module(module), "__file__", None) or ""
    return origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def described() -> str:
    """'compiled', 'pure Python', or which modules of the data path are not compiled."""
    names = modules()
    interpreted = [name for name in names if not is_compiled(name)]
    if not interpreted:
        return f"compiled ({len(names)} modules, mypyc)"
    if len(interpreted) == len(names):
        return "pure Python (not compiled: more CPU per request)"
    return f"partly compiled: {', '.join(interpreted)} pure Python"
