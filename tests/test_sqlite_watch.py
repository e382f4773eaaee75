"""The SQLite backend's watches share their reads: one query per tick for every service watched
through one registry object (a consumer with 100 upstreams: 10 reads a second, not 1,000)."""

from __future__ import annotations

from pathlib import Path

from registry_adapters import Instance
from registry_adapters.sqlite import SQLiteRegistry


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
