"""The PublicationLog contract, for the Cassandra adapter and the in-memory fake."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from eventstore.ports import PublicationLog
from tests.support import unique

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LATER = T0 + timedelta(hours=1)


class PublicationLogContract:
    async def test_nothing_published_yet(self, outbox: PublicationLog) -> None:
        assert await outbox.published_through(unique("agg")) == 0

    async def test_markers_are_found_once_old_enough(self, outbox: PublicationLog) -> None:
        aggregate = unique("agg")
        await outbox.mark_pending(aggregate, 3, T0)
        assert aggregate in await outbox.pending(older_than=LATER)
        assert aggregate not in await outbox.pending(older_than=T0)

    async def test_publishing_retires_covered_markers_only(self, outbox: PublicationLog) -> None:
        aggregate = unique("agg")
        await outbox.mark_pending(aggregate, 2, T0)
        await outbox.mark_pending(aggregate, 5, T0)
        await outbox.mark_published(aggregate, 2)
        assert await outbox.published_through(aggregate) == 2
        assert aggregate in await outbox.pending(older_than=LATER), "version 5 is not published"
        await outbox.mark_published(aggregate, 5)
        assert aggregate not in await outbox.pending(older_than=LATER)

    async def test_the_cursor_never_moves_backwards(self, outbox: PublicationLog) -> None:
        aggregate = unique("agg")
        await outbox.mark_published(aggregate, 7)
        await outbox.mark_published(aggregate, 4)
        assert await outbox.published_through(aggregate) == 7
