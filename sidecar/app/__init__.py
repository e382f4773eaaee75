"""The shell on top: the command line (`cli`), the composition of the parts into one running
sidecar (`runtime`), and the admin API (`admin`, `openapi`). Imports every part but the demo,
which only the `demo` command reaches."""

import sys

# The sidecar never runs httpx's own command line, but where rich and click are installed (a
# development environment, many images), `import httpx` imports them for it: 0.2 s of CPU at
# every start. A None entry makes that import fail, and httpx then defines a stub instead.
if "httpx._main" not in sys.modules:
    sys.modules["httpx._main"] = None  # type: ignore[assignment]
