"""The HTTP core's connection pool, over real loopback sockets: at most `limit` connections per
origin, further requests wait for one, and a connection kept alive serves the next request."""

from __future__ import annotations

import asyncio

from sidecar.http import Origin, Pool

BOUND_SECONDS = 10.0


class SlowOrigin:
    """A server that holds every response until `release` is set, counting connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0
        self.two_requests = asyncio.Event()
        self.release = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                if self.requests == 2:
                    self.two_requests.set()
                await self.release.wait()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_pool_bounds_connections_per_origin() -> None:
    """With a limit of 2, three requests at once open two connections; the third waits, and
    goes out on a connection freed by an answered one: no third connection is ever opened."""
    slow = SlowOrigin()
    server = await asyncio.start_server(slow.serve, "127.0.0.1", 0)
    origin = Origin("127.0.0.1", server.sockets[0].getsockname()[1])
    pool = Pool(limit=2, connect_timeout=BOUND_SECONDS)

    async def get(n: int) -> int:
        connection = await pool.request(origin, b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % n, method="GET")
        connection.request_sent()
        response = await pool.response(connection)
        await connection.body_received
        pool.release(connection)
        return response.status

    try:
        async with asyncio.timeout(BOUND_SECONDS):
            requests = [asyncio.create_task(get(n)) for n in range(3)]
            await slow.two_requests.wait()
            assert (pool.open_count(origin), pool.waiting(origin)) == (2, 1)
            slow.release.set()
            assert await asyncio.gather(*requests) == [200, 200, 200]
        assert (slow.connections, slow.requests) == (2, 3)
    finally:
        pool.close()
        server.close()
        await server.wait_closed()
