"""The build of the package: everything in pyproject.toml, plus its data path compiled to C.

The modules sidecar/compiled.py names carry every request and stream (the HTTP/1.1 and HTTP/2
layers, the provider's and the consumer's policy per request). mypyc (mypy's compiler) turns
each into a C extension from the same source, checked as strictly as `make typecheck` checks
it: about half the CPU per stream (README, "HTTP/2 and gRPC"). The rest stays interpreted.

All or nothing: GRACEFUL_SIDECAR_COMPILE=0 builds pure Python, and so does a build where mypyc
cannot run or one extension fails to compile (no C compiler, no Python headers), said in the
build's output; the modules then run from source, the same code. A sidecar's log says which data
path it runs. `make` builds these in place (scripts/compile-data-path.sh) for the tests, the demo
and the benchmarks.
"""

from __future__ import annotations

import os
import runpy
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# sidecar/compiled.py names them, and tells a running sidecar whether they are compiled
SOURCES: tuple[str, ...] = runpy.run_path("sidecar/compiled.py")["SOURCES"]


def pure_python(why: str) -> list[Extension]:
    print(f"setup.py: {why}: the data path stays pure Python", file=sys.stderr)
    return []


def compiled() -> list[Extension]:
    if os.environ.get("GRACEFUL_SIDECAR_COMPILE", "1") == "0":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        return pure_python("mypy is not installed")
    try:
        # the group's shared library (sidecar_native__mypyc) sits beside the `sidecar` package:
        # mypyc places every compiled module relative to it, so it cannot go inside
        extensions: list[Extension] = mypycify(list(SOURCES), opt_level="2", group_name="sidecar_native")
    except SystemExit:  # mypyc's type check failed (said above)
        return pure_python("mypyc could not check the sources")
    for extension in extensions:
        extension.optional = True  # a failure is caught, and then undone below
    return extensions


class AllOrNothing(build_ext):
    """The compiled modules share one library: with any of them missing the rest cannot load, so
    if one failed to build, every one is removed and the package runs from source."""

    def run(self) -> None:
        super().run()
        built = [self.get_ext_fullpath(extension.name) for extension in self.extensions]
        if built and not all(os.path.exists(path) for path in built):
            for path in built:
                if os.path.exists(path):
                    os.remove(path)
            pure_python("an extension failed to compile (see above)")


setup(ext_modules=compiled(), cmdclass={"build_ext": AllOrNothing})
