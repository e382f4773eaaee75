"""An app written as raw bytes, one script per path, for what the demo app cannot do: send a 103
before its 200, refuse an `Expect: 100-continue`, switch protocols to a raw echo, cut a response
short, hang. It runs on a thread with an event loop of its own, so that tests may block (on a
sidecar starting, on a sync HTTP call) without starving it.

A script gets the request head and the connection; the server closes the connection after the
script returns (scripts answer with `Connection: close`), so no request ever waits on a pooled
connection that nobody reads.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType

from tests.support.ports import free_port

STARTUP_SECONDS = 10.0


@dataclass(frozen=True)
class Head:
    method: str
    target: str
    headers: list[tuple[str, str]]
    raw: bytes

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name.lower()), None)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


Script = Callable[[Head, asyncio.StreamReader, asyncio.StreamWriter, "ScriptedApp"], Awaitable[None]]


async def not_found(
    head: Head, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, app: ScriptedApp
) -> None:
    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


async def plain(
    head: Head, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, app: ScriptedApp
) -> None:
    """A whole response, then the connection closes."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


async def cut(
    head: Head, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, app: ScriptedApp
) -> None:
    """Announces 100 bytes, sends 10 and closes."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")


class ScriptedApp:
    """Context manager: serves `scripts` (path -> script) on 127.0.0.1:`port` while inside."""

    def __init__(self, scripts: Mapping[str, Script]) -> None:
        self.scripts = scripts
        self.port = free_port()
        self.heads: list[Head] = []
        self.events: list[str] = []  # what scripts report, e.g. "eof" when the peer closed
        self._loop = asyncio.new_event_loop()
        # Events bind to the loop that first waits on them: the app's own.
        self._release = asyncio.Event()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name=f"scripted-app-{self.port}", daemon=True)
        self._started = threading.Event()
        self._startup_error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def paths(self) -> list[str]:
        return [head.path for head in self.heads]

    async def released(self) -> None:
        """For scripts that hang: returns once the test is over (or `release` was called)."""
        await self._release.wait()

    def release(self) -> None:
        """Let every script waiting in `released` go on (thread-safe)."""
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._release.set)

    def __enter__(self) -> ScriptedApp:
        self._thread.start()
        if not self._started.wait(STARTUP_SECONDS) or self._startup_error is not None:
            raise AssertionError(f"the scripted app did not start: {self._startup_error!r}")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(STARTUP_SECONDS)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        try:
            server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        except BaseException as exc:
            self._startup_error = exc
            self._started.set()
            raise
        self._started.set()
        async with server:
            await self._stop.wait()
            server.close()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = raw[:-4].decode("latin-1").split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers = [(name.strip(), value.strip()) for name, _, value in (x.partition(":") for x in lines)]
            head = Head(method, target, headers, raw)
            self.heads.append(head)
            await self.scripts.get(head.path, not_found)(head, reader, writer, self)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the sidecar went away: nothing to answer
        finally:
            writer.close()
