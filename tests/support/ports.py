"""Free loopback ports for servers started by tests."""

from __future__ import annotations

import socket

# Ports handed out by this process: a port closed again is free to the kernel, which may hand
# it out twice in a row (seen: --listen and --admin given the same port). Never reuse one here.
_handed_out: set[int] = set()


def free_port() -> int:
    """A port on 127.0.0.1 that is free for TCP and UDP right now.

    UDP is checked too because Consul's Serf ports listen on both. The port is released before it
    is returned, so another process may still take it: good enough for tests, not a reservation.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        if port not in _handed_out:
            _handed_out.add(port)
            return port
