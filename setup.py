"""The build of the package: everything in pyproject.toml, plus its data path compiled to C.

The modules sidecar/compiled.py names carry every request and stream (the HTTP/1.1 and HTTP/2
layers, the provider's and the consumer's policy per request). mypyc (mypy's compiler) turns
each into a C extension from the same source, checked as strictly as `make typecheck` checks
it: about half the CPU per stream (README, "HTTP/2 and gRPC"). The rest stays interpreted.

GRACEFUL_SIDECAR_COMPILE=0 builds pure Python, as does a machine without mypy or a C compiler
(each extension is optional: one that fails to build is left out, and its module runs from
source). A sidecar's log says which data path it runs. `make` builds these in place
(scripts/compile-data-path.sh) for the tests, the demo and the benchmarks.
"""

from __future__ import annotations

import os
import runpy

from setuptools import Extension, setup

# sidecar/compiled.py names them, and tells a running sidecar whether they are compiled
SOURCES: tuple[str, ...] = runpy.run_path("sidecar/compiled.py")["SOURCES"]


def compiled() -> list[Extension]:
    if os.environ.get("GRACEFUL_SIDECAR_COMPILE", "1") == "0":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("setup.py: mypy is not installed; the data path stays pure Python")
        return []
    extensions: list[Extension] = mypycify(list(SOURCES), opt_level="2", group_name="sidecar_native")
    for extension in extensions:
        extension.optional = True
    return extensions


setup(ext_modules=compiled())
