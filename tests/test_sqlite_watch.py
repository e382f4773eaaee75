"""The SQLite backend's watches share their reads: one query per tick for every service watched
through one registry object (a consumer with 100 upstreams: 10 reads a second, not 1,000)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from registry_adapters import Instance
from registry_adapters.sqlite import SQLiteRegistry
from tests.support.procs import await_for


async def test_watches_of_several_services_share_one_read(tmp_path: Path) -> None:
    """Three watches through one object: after the first answers, each read covers all three
    services, and a change still reaches the watch of its service."""
    registry = SQLiteRegistry(tmp_path / "r.db", poll_interval=0.05)
    reads: list[tuple[str, ...]] = []
    read_live = registry._read_live

    def counted(services: list[str]) -> dict[str, list[Instance]]:
        reads.append(tuple(services))
        return read_live(services)

    registry._read_live = counted  # type: ignore[method-assign]
    async with registry:
        await registry.register(Instance("a", "a1", "127.0.0.1", 1))
        watches = [registry.watch(service) for service in ("a", "b", "c")]
        first = [await anext(watch) for watch in watches]
        assert [[i.instance_id for i in found] for found in first] == [["a1"], [], []]
        reads.clear()
        await registry.register(Instance("a", "a2", "127.0.0.1", 2))
        assert [i.instance_id for i in await anext(watches[0])] == ["a1", "a2"]
        for watch in watches:
            await watch.aclose()
    assert reads
    assert all(set(services) == {"a", "b", "c"} for services in reads), reads


async def test_a_watch_reads_the_file_now_at_its_path(tmp_path: Path) -> None:
    """Reads share one connection kept open between polls; when the file is removed (`rm r.db*`,
    by hand) and made again by another sidecar's registration, the watch reads the new file, not
    the removed one it had open."""
    path = tmp_path / "r.db"
    async with SQLiteRegistry(path, poll_interval=0.05) as registry:
        await registry.register(Instance("a", "a1", "127.0.0.1", 1))
        watch = registry.watch("a")
        assert [i.instance_id for i in await anext(watch)] == ["a1"]
        for name in ("r.db", "r.db-wal", "r.db-shm"):
            (tmp_path / name).unlink(missing_ok=True)
        async with SQLiteRegistry(path) as other:
            await other.register(Instance("a", "b1", "127.0.0.1", 2))
            async with asyncio.timeout(10):
                while "b1" not in [i.instance_id for i in await anext(watch)]:
                    pass
        await watch.aclose()


async def test_a_row_that_expires_leaves_the_watch_with_nothing_written(tmp_path: Path) -> None:
    """A watch skips reading a file nobody wrote to since its last read, but not past the expiry
    of a row it listed: a sidecar that stopped beating leaves the list though nothing changed."""
    path = tmp_path / "r.db"
    async with SQLiteRegistry(path, poll_interval=0.05) as registry:
        async with SQLiteRegistry(path, ttl=3.0, beat_interval=60.0) as stopped:
            await stopped.register(Instance("a", "a1", "127.0.0.1", 1))
        watch = registry.watch("a")
        assert [i.instance_id for i in await anext(watch)] == ["a1"]
        async with asyncio.timeout(8):
            assert await anext(watch) == []
        await watch.aclose()


async def test_a_poll_reads_no_row_while_nothing_is_committed(tmp_path: Path) -> None:
    """Polls of a file nobody wrote to run PRAGMA data_version and nothing else (the statements
    of the readers' connection, traced); a commit by another connection makes the next poll read."""
    path = tmp_path / "r.db"
    async with SQLiteRegistry(path, poll_interval=0.02, beat_interval=60.0) as registry:
        await registry.register(Instance("a", "a1", "127.0.0.1", 1))
        watch = registry.watch("a")
        assert [i.instance_id for i in await anext(watch)] == ["a1"]
        assert registry._reader is not None
        statements: list[str] = []
        registry._reader.set_trace_callback(statements.append)  # called in the reading thread
        change = asyncio.ensure_future(anext(watch))
        await await_for(lambda: statements.count("PRAGMA data_version") >= 5, what="five polls")
        assert not change.done()
        assert set(statements) == {"PRAGMA data_version"}, statements
        async with SQLiteRegistry(path) as other:
            await other.register(Instance("a", "a2", "127.0.0.1", 2))
        async with asyncio.timeout(5):
            assert [i.instance_id for i in await change] == ["a1", "a2"]
        assert any(statement.startswith("SELECT") for statement in statements)
        await watch.aclose()
