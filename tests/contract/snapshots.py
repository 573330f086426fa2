"""The SnapshotStore contract, for Cassandra and the in-memory fake."""

from __future__ import annotations

from datetime import UTC, datetime

from eventstore.domain.snapshots import Snapshot
from eventstore.ports import SnapshotStore
from tests.support import unique

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def snapshot(aggregate_id: str, version: int, state: bytes = b"{}") -> Snapshot:
    return Snapshot(aggregate_id, version, state, "json.test", 1, T0)


class SnapshotStoreContract:
    async def test_none_yet(self, snapshots: SnapshotStore) -> None:
        assert await snapshots.latest(unique("agg"), None) is None

    async def test_latest_at_or_below(self, snapshots: SnapshotStore) -> None:
        aggregate = unique("agg")
        for version in (10, 20, 30):
            await snapshots.save(snapshot(aggregate, version, b'{"v": %d}' % version))
        latest = await snapshots.latest(aggregate, None)
        assert latest == snapshot(aggregate, 30, b'{"v": 30}')
        below = await snapshots.latest(aggregate, 25)
        assert below is not None
        assert below.version == 20
        assert (await snapshots.latest(aggregate, 20) or snapshot("", 0)).version == 20
        assert await snapshots.latest(aggregate, 9) is None

    async def test_saving_a_version_again_replaces_it(self, snapshots: SnapshotStore) -> None:
        aggregate = unique("agg")
        await snapshots.save(snapshot(aggregate, 5, b"old"))
        await snapshots.save(snapshot(aggregate, 5, b"new"))
        latest = await snapshots.latest(aggregate, None)
        assert latest is not None
        assert latest.state == b"new"

    async def test_delete_removes_every_snapshot_of_the_aggregate(
        self, snapshots: SnapshotStore
    ) -> None:
        aggregate, other = unique("agg"), unique("agg")
        for version in (1, 2):
            await snapshots.save(snapshot(aggregate, version))
        await snapshots.save(snapshot(other, 1))
        assert await snapshots.delete(aggregate) == 2
        assert await snapshots.latest(aggregate, None) is None
        assert await snapshots.latest(other, None) is not None
        assert await snapshots.delete(aggregate) == 0
