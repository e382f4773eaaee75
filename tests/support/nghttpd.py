"""nghttpd, nghttp2's HTTP/2 server (Debian's nghttp2-server), as a reference peer of the HTTP/2
tests: h2c with prior knowledge on a free loopback port, serving the files of a directory of the
test's own (and echoing POST and PUT bodies), awaited until it accepts, stopped by pid.

It is what the raw HTTP/2 client (tests/support/rawh2.py) and the h2spec runner
(tests/support/h2spec.py) are checked against, and an h2c app for a sidecar to front.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from tests.support.ports import free_port
from tests.support.server_process import ServerProcess

NGHTTPD_BINARY = Path("/usr/sbin/nghttpd")


def nghttpd_binary() -> str:
    """nghttpd's path; RuntimeError when it is not installed."""
    binary = NGHTTPD_BINARY if NGHTTPD_BINARY.is_file() else shutil.which("nghttpd")
    if binary is None:
        raise RuntimeError("nghttpd not found: `make tools` installs it (scripts/install-nghttp2.sh)")
    return str(binary)


class Nghttpd(ServerProcess):
    """nghttpd on 127.0.0.1:`port` (h2c), serving `workdir`/htdocs: `index.html` holds "hello\\n"
    unless the test writes its own files there. `args` go on its command line as they are
    (e.g. "-m", "10": at most 10 concurrent streams per connection)."""

    name = "nghttpd"

    def __init__(self, workdir: Path, *args: str) -> None:
        super().__init__(workdir)
        self._binary = nghttpd_binary()
        self._args = args
        self.port = free_port()
        self.htdocs = workdir / "htdocs"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """nghttpd as a sidecar's `--app` names it (HTTP/2 with prior knowledge)."""
        return f"h2c://127.0.0.1:{self.port}"

    def _argv(self) -> list[str]:
        self.htdocs.mkdir(exist_ok=True)
        index = self.htdocs / "index.html"
        if not index.exists():
            index.write_text("hello\n")
        address = ("-a", "127.0.0.1", "-d", str(self.htdocs))
        return [self._binary, "--no-tls", *address, "--echo-upload", *self._args, str(self.port)]

    def _ready(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True  # it listens once it has read its options; a refused connect raises OSError
