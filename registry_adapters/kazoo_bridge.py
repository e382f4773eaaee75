"""kazoo's thread-based client, bridged into asyncio for the ZooKeeper backend.

A kazoo call is issued with its `*_async` variant and its result handed to the event loop
(`rawlink` + `call_soon_threadsafe`), so that no call blocks the loop and none needs a worker
thread; only stopping a session, which blocks, runs in one. kazoo's failures are translated
into the registry errors, except the conflicts another writer may cause between a read and a
write (NoNode, NodeExists, BadVersion), which the caller handles.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import (
    AuthFailedError,
    BadArgumentsError,
    BadVersionError,
    InvalidACLError,
    KazooException,
    NoAuthError,
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
)

from registry_adapters.base import RegistryError, RegistryRejected, RegistryUnavailable

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


async def call(what: str, timeout: float, start: Callable[..., Any], *args: Any) -> Any:
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
        raise translated(what, exc) from exc


def translated(what: str, exc: BaseException) -> RegistryError:
    if isinstance(exc, REJECTED):
        return RegistryRejected(f"zookeeper {what}: {exc!r}")
    if isinstance(exc, TimeoutError):
        return RegistryUnavailable(f"zookeeper {what}: no answer in time")
    return RegistryUnavailable(f"zookeeper {what}: {exc!r}")


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
