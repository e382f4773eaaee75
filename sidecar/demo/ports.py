"""Free loopback ports for the servers of the demo, the tests and the benchmarks: one helper, so
that one process never hands out a port twice, whichever module asked."""

from __future__ import annotations

import os
import random
import socket

# Servers of tests, the demo and benchmarks listen below Linux's ephemeral range (32768 and up),
# where no outgoing connection can take a port between the moment it is found free and the
# moment the server binds it; each pytest-xdist worker searches a slice of its own.
PORT_BASE, PORT_SPAN = 20000, 12000
# Ports handed out by this process: a port closed again is free to the kernel, which may hand
# it out twice in a row (seen: --listen and --admin given the same port). Never reuse one here.
_handed_out: set[int] = set()


def _port_slice() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker.removeprefix("gw")) if worker.startswith("gw") else 0
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    size = PORT_SPAN // count
    return range(PORT_BASE + index * size, PORT_BASE + (index + 1) * size)


def free_port() -> int:
    """A port on 127.0.0.1 that is free for TCP and UDP right now.

    UDP is checked too because Consul's Serf ports listen on both. The port is released before it
    is returned, so another process may still take it: good enough for loopback runs, not a
    reservation. The search starts at a random place, so that concurrent runs rarely meet.
    """
    ports = _port_slice()
    start = random.randrange(len(ports))
    for offset in range(len(ports)):
        port = ports[(start + offset) % len(ports)]
        if port in _handed_out:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                tcp.bind(("127.0.0.1", port))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port left in {ports.start}-{ports.stop - 1}")
