"""kazoo's thread-based client, bridged into asyncio for the ZooKeeper backend.

A kazoo call is issued with its `*_async` variant and its result handed to the event loop
(`rawlink` + `call_soon_threadsafe`), so that no call blocks the loop and none needs a worker
thread; only stopping a session, which blocks, runs in one. kazoo's failures are translated
into the registry errors, except the conflicts another writer may cause between a read and a
write (NoNode, NodeExists, BadVersion), which the caller handles.

kazoo keeps why it cannot connect to itself: its connection thread retries, and says why only
in a warning ("Connection dropped: socket connection error: Connection refused"). `Drops` is the
logger it is given, which passes everything on and keeps the last error of such a warning, so
that a session that never came can be told as "connection refused", not only as a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import (
    AuthFailedError,
    BadArgumentsError,
    BadVersionError,
    ConnectionLoss,
    InvalidACLError,
    KazooException,
    NoAuthError,
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
    SessionExpiredError,
)

from registry_adapters.base import RegistryError, RegistryRejected, RegistryUnavailable
from registry_adapters.reasons import reason, told

REJECTED = (
    AuthFailedError,
    BadArgumentsError,
    InvalidACLError,
    NoAuthError,
    NoChildrenForEphemeralsError,
    ValueError,  # kazoo's path validation
)
# What another writer may cause between our read of the children and our transaction.
CONFLICTS = (NodeExistsError, NoNodeError, BadVersionError)
# kazoo's errors without a text of their own, in words.
_WORDS: dict[type[BaseException], str] = {
    ConnectionLoss: "connection lost",
    SessionExpiredError: "session expired",
    NoAuthError: "not authorized",
    AuthFailedError: "authentication failed",
}


class Drops(logging.LoggerAdapter[logging.Logger]):
    """The logger of one kazoo client: logs as `logger` does, and keeps in `last` the error of
    kazoo's last warning that carried one (why it could not connect)."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})
        self.last: BaseException | None = None

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        errors = [arg for arg in args if isinstance(arg, BaseException)]
        if level >= logging.WARNING and errors:
            self.last = errors[-1]  # set from kazoo's thread: one assignment, atomic
        super().log(level, msg, *args, **kwargs)


def said(exc: BaseException, timeout: float | None = None) -> str:
    """`reasons.reason`, knowing kazoo's errors that have no text."""
    for kind, words in _WORDS.items():
        if isinstance(exc, kind):
            return words
    return reason(exc, timeout)


async def call(where: str, what: str, timeout: float, start: Callable[..., Any], *args: Any) -> Any:
    """Issue a kazoo `*_async` call and await its result without blocking the loop;
    translate its failures. Conflicts (NoNode, NodeExists, BadVersion) pass through."""
    loop = asyncio.get_running_loop()
    settled: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any) -> None:
        if not settled.done():
            settled.set_result(result)

    try:
        result = start(*args)
        result.rawlink(threadsafe(loop, settle))
        async with asyncio.timeout(timeout):
            await settled
        return result.get(block=False)
    except CONFLICTS:
        raise
    except (KazooException, TimeoutError, *REJECTED) as exc:
        raise translated(where, what, exc, timeout) from exc


def translated(where: str, what: str, exc: BaseException, timeout: float | None = None) -> RegistryError:
    error = RegistryRejected if isinstance(exc, REJECTED) else RegistryUnavailable
    return error(told(where, said(exc, timeout), what))


def threadsafe(loop: asyncio.AbstractEventLoop, callback: Callable[..., None]) -> Callable[..., None]:
    """A callable for kazoo's threads that runs `callback` in `loop` (dropped once it closed)."""

    def call(*args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
            loop.call_soon_threadsafe(callback, *args)

    return call


async def stop(client: KazooClient | None) -> None:
    """End a session (its ephemeral nodes go at once if the server hears it) and free it."""
    if client is None:
        return

    def stop() -> None:
        client.stop()
        client.close()

    await asyncio.to_thread(stop)
