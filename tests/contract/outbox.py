"""The PublicationLog contract, for the Cassandra adapter and the in-memory fake."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from eventstore.ports import ParkedAggregate, PublicationLog
from tests.support import unique

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LATER = T0 + timedelta(hours=1)


class PublicationLogContract:
    async def test_nothing_published_yet(self, outbox: PublicationLog) -> None:
        assert await outbox.published_through(unique("agg")) == 0

    async def test_the_cursor_never_moves_backwards(self, outbox: PublicationLog) -> None:
        aggregate = unique("agg")
        await outbox.mark_published(aggregate, 7)
        await outbox.mark_published(aggregate, 4)
        assert await outbox.published_through(aggregate) == 7

    async def test_journal_entries_are_read_in_order_above_a_point(
        self, outbox: PublicationLog
    ) -> None:
        writer = uuid.uuid4()
        for seq in range(1, 6):
            await outbox.record(writer, seq, [f"a{seq}", "b"])
        assert await outbox.entries(writer, 0, 2) == [(1, ["a1", "b"]), (2, ["a2", "b"])]
        assert [s for s, _ in await outbox.entries(writer, 3, 100)] == [4, 5]
        assert await outbox.entries(writer, 5, 100) == []
        assert await outbox.entries(uuid.uuid4(), 0, 100) == []

    async def test_entries_are_found_across_storage_groups(self, outbox: PublicationLog) -> None:
        # Seqs across the Cassandra adapter's partitions (it groups entries by seq); a page may
        # end early at such a boundary, so read until an empty page as callers do.
        writer = uuid.uuid4()
        seqs = [9_998, 9_999, 10_000, 10_001, 19_999, 20_000]
        for seq in seqs:
            await outbox.record(writer, seq, ["x"])
        found: list[int] = []
        after = 9_998
        while page := await outbox.entries(writer, after, 100):
            found += [seq for seq, _ in page]
            after = page[-1][0]
        assert found == seqs[1:]

    async def test_heartbeats_and_settled_points(self, outbox: PublicationLog) -> None:
        writer = uuid.uuid4()
        await outbox.heartbeat(writer, 3, T0)
        await outbox.settle(writer, 5)
        mine = [w for w in await outbox.writers() if w.writer == writer]
        assert len(mine) == 1
        assert (mine[0].heartbeat, mine[0].resolved) == (T0, 5)
        await outbox.heartbeat(writer, 6, LATER)
        mine = [w for w in await outbox.writers() if w.writer == writer]
        assert (mine[0].heartbeat, mine[0].resolved) == (LATER, 6)

    async def test_forgetting_keeps_unsettled_entries(self, outbox: PublicationLog) -> None:
        writer = uuid.uuid4()
        await outbox.heartbeat(writer, 0, T0)
        for seq in range(1, 4):
            await outbox.record(writer, seq, ["x"])
        await outbox.forget(writer, 0, 1)
        assert [s for s, _ in await outbox.entries(writer, 1, 100)] == [2, 3]
        await outbox.forget(writer, 0, 3, retire=True)
        assert await outbox.entries(writer, 0, 100) == []
        assert writer not in {w.writer for w in await outbox.writers()}

    async def test_parked_aggregates_are_listed_until_unparked(
        self, outbox: PublicationLog
    ) -> None:
        aggregate = unique("agg")
        parked = ParkedAggregate(aggregate, "record too large", T0, 1, LATER)
        await outbox.park(parked)
        assert parked in await outbox.parked()
        again = ParkedAggregate(aggregate, "still too large", T0, 2, LATER)
        await outbox.park(again)
        listed = [p for p in await outbox.parked() if p.aggregate_id == aggregate]
        assert listed == [again]
        await outbox.unpark(aggregate)
        assert aggregate not in {p.aggregate_id for p in await outbox.parked()}
