"""Debian's nginx as a reverse proxy in front of an app, for tests that hold the sidecar's data path
up against it (tests/test_nginx_differential.py): started on a free loopback port, awaited until
it accepts, stopped by pid.

It writes nothing outside its work dir: the config, the pid file, the access log and every temp
path are there; its error log goes to stderr, into the work dir's nginx.log (where a failed start
is reported from), and `-e stderr` sends there too what it meets before reading the config (not
to /var/log/nginx). One process (`master_process off`), in the foreground (`daemon off`), so
that the pid we stop is the one that serves: no worker is left behind.

The proxy is configured the way a careful operator would put nginx in front of an app, and as
close to the sidecar's data path as nginx goes: HTTP/1.1 to the app over kept-alive connections,
bodies streamed both ways (no buffering, no size limit), the client's Host and the caller
appended to X-Forwarded-For, 64 KiB for a request head line and for the app's response head
(the sidecar's limits), no retry on another upstream. What it does differently on purpose is for
the test to list, with the reason.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from tests.support.ports import free_port
from tests.support.server_process import ServerProcess

NGINX_BINARY = Path("/usr/sbin/nginx")
# nginx's temp paths; each one defaults to a directory under the compiled-in prefix (/var/lib/nginx).
TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
# A response head, like the sidecar's limit on one; nginx's default (one page) is 4 KiB.
RESPONSE_HEAD_BYTES = 64 * 1024
# Idle app connections kept per worker: the test sends one request at a time, so at most one is
# idle at any moment; a few more cost nothing.
UPSTREAM_KEEPALIVE = 8


class Nginx(ServerProcess):
    """nginx listening on 127.0.0.1:`port`, proxying every request to `app_port` on 127.0.0.1."""

    name = "nginx"

    def __init__(self, workdir: Path, app_port: int) -> None:
        binary = NGINX_BINARY if NGINX_BINARY.is_file() else shutil.which("nginx")
        if binary is None:
            raise RuntimeError("nginx not found: `make tools` installs it (scripts/install-nginx.sh)")
        super().__init__(workdir)
        self._binary = str(binary)
        self.app_port = app_port
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _argv(self) -> list[str]:
        conf = self._workdir / "nginx.conf"
        conf.write_text(self.config())
        for kind in TEMP_KINDS:
            (self._workdir / kind).mkdir(exist_ok=True)
        return [self._binary, "-p", str(self._workdir), "-c", str(conf), "-e", "stderr"]

    def _ready(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True  # it listens once the config is read; a refused connect raises OSError

    def config(self) -> str:
        prefix = self._workdir
        temp_paths = "".join(f"    {kind}_temp_path {prefix / kind};\n" for kind in TEMP_KINDS)
        return f"""\
daemon off;
master_process off;
pid {prefix / "nginx.pid"};
# info: client errors (a 400 and why) are logged too, for whoever reads a failing test's logs.
error_log stderr info;
events {{ worker_connections 256; }}
http {{
    access_log {prefix / "access.log"};
{temp_paths}
    # nginx adds its own Server (here without the version) and Date headers, and drops the app's:
    # the test normalises both away.
    server_tokens off;

    upstream app {{
        server 127.0.0.1:{self.app_port};
        keepalive {UPSTREAM_KEEPALIVE};
    }}

    server {{
        listen 127.0.0.1:{self.port};
        # A request head line of up to 64 KiB, as the sidecar's head limit; nginx counts lines
        # (and 4 buffers of them), the sidecar the whole head.
        large_client_header_buffers 4 64k;
        # Bodies of any size, streamed: the sidecar has no body limit either.
        client_max_body_size 0;

        location / {{
            # No URI part: the request target goes to the app as the client sent it (dot
            # segments included), as the sidecar does with an --app URL without a path.
            proxy_pass http://app;
            proxy_http_version 1.1;
            # Keep-alive to the app: no Connection header of nginx's own (it would say close).
            proxy_set_header Connection "";
            # The client's Host header as it came. Where that differs from the sidecar: for an
            # absolute-form target nginx sends the Host header the client sent (the sidecar,
            # as RFC 9112 section 3.2.2 says, the target's authority); for an HTTP/1.0 request
            # without Host, $http_host is empty and nginx sends no Host at all (the sidecar
            # sends the --app URL's). `$host` would fix the second but lowercases the name and
            # drops the port.
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            # Stream both ways, as the sidecar relays: nginx's defaults read a whole request
            # body before forwarding it, and spool responses to temp files.
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_buffer_size {RESPONSE_HEAD_BYTES // 1024}k;
            proxy_buffers 4 {RESPONSE_HEAD_BYTES // 1024}k;
            # One app: a failed request is answered, not sent again.
            proxy_next_upstream off;
        }}
    }}
}}
"""
