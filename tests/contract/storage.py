"""The EventStorage contract. Every adapter's test class subclasses this and provides a
`storage` fixture, so the in-memory fake and Cassandra are held to the same behaviour."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from eventstore.domain.events import Direction, NewEvent
from eventstore.ports import Committed, EventStorage, Rejected
from tests.support import unique

NOW = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def new_events(count: int, event_type: str = "Happened") -> list[NewEvent]:
    return [
        NewEvent(
            event_id=uuid.uuid4(),
            event_type=event_type,
            data=f'{{"n": {i}}}'.encode(),
            content_type="application/json",
            metadata={"correlation_id": "c-1"} if i % 2 else {},
        )
        for i in range(count)
    ]


class EventStorageContract:
    async def test_new_stream_is_empty(self, storage: EventStorage) -> None:
        aggregate = unique("agg")
        state = await storage.stream_state(aggregate)
        assert (state.version, state.aggregate_type) == (0, None)
        assert await storage.read(aggregate, 1, Direction.FORWARDS, 10) == []
        assert await storage.describe(aggregate) is None

    async def test_append_then_read_back_everything(self, storage: EventStorage) -> None:
        aggregate = unique("agg")
        events = new_events(3)
        outcome = await storage.append(aggregate, "Order", 0, events, NOW)
        assert outcome == Committed(1, 3, NOW)
        read = await storage.read(aggregate, 1, Direction.FORWARDS, 10)
        assert [e.version for e in read] == [1, 2, 3]
        assert [e.event_id for e in read] == [e.event_id for e in events]
        assert [e.data for e in read] == [e.data for e in events]
        assert [dict(e.metadata) for e in read] == [dict(e.metadata) for e in events]
        assert {e.aggregate_type for e in read} == {"Order"}
        assert {e.recorded_at for e in read} == {NOW}
        state = await storage.stream_state(aggregate)
        assert (state.version, state.aggregate_type) == (3, "Order")

    async def test_the_settled_state_is_the_head_once_nothing_is_in_flight(
        self, storage: EventStorage
    ) -> None:
        aggregate = unique("agg")
        empty = await storage.settled_state(aggregate)
        assert (empty.version, empty.aggregate_type) == (0, None)
        await storage.append(aggregate, "Order", 0, new_events(2), NOW)
        settled = await storage.settled_state(aggregate)
        assert (settled.version, settled.aggregate_type) == (2, "Order")

    async def test_append_at_stale_version_writes_nothing(self, storage: EventStorage) -> None:
        aggregate = unique("agg")
        await storage.append(aggregate, "Order", 0, new_events(2), NOW)
        refused = new_events(4)
        outcome = await storage.append(aggregate, "Order", 1, refused, NOW)
        assert outcome == Rejected(2, "Order", {})
        outcome = await storage.append(aggregate, "Order", 0, refused, NOW)
        assert outcome == Rejected(2, "Order", {})
        read = await storage.read(aggregate, 1, Direction.FORWARDS, 100)
        assert len(read) == 2
        assert not {e.event_id for e in refused} & {e.event_id for e in read}

    async def test_append_beyond_head_is_refused(self, storage: EventStorage) -> None:
        aggregate = unique("agg")
        assert await storage.append(aggregate, "Order", 5, new_events(1), NOW) == Rejected(0, None)
        assert await storage.read(aggregate, 1, Direction.FORWARDS, 10) == []

    async def test_repeated_event_id_is_refused_and_reported(self, storage: EventStorage) -> None:
        aggregate = unique("agg")
        events = new_events(2)
        await storage.append(aggregate, "Order", 0, events, NOW)
        outcome = await storage.append(aggregate, "Order", 2, events, NOW)
        assert isinstance(outcome, Rejected)
        assert outcome.actual_version == 2
        assert {k: v.version for k, v in outcome.existing.items()} == {
            events[0].event_id: 1,
            events[1].event_id: 2,
        }
        assert len(await storage.read(aggregate, 1, Direction.FORWARDS, 10)) == 2

    async def test_other_aggregate_type_is_refused(self, storage: EventStorage) -> None:
        aggregate = unique("agg")
        await storage.append(aggregate, "Order", 0, new_events(1), NOW)
        outcome = await storage.append(aggregate, "Payment", 1, new_events(1), NOW)
        assert outcome == Rejected(1, "Order", {})

    async def test_reads_page_forwards_and_backwards(self, storage: EventStorage) -> None:
        aggregate = unique("agg")
        await storage.append(aggregate, "Order", 0, new_events(5), NOW)
        await storage.append(aggregate, "Order", 5, new_events(5), NOW)

        async def versions(start: int | None, direction: Direction, limit: int) -> list[int]:
            return [e.version for e in await storage.read(aggregate, start, direction, limit)]

        assert await versions(1, Direction.FORWARDS, 4) == [1, 2, 3, 4]
        assert await versions(8, Direction.FORWARDS, 4) == [8, 9, 10]
        assert await versions(11, Direction.FORWARDS, 4) == []
        assert await versions(None, Direction.BACKWARDS, 3) == [10, 9, 8]
        assert await versions(2, Direction.BACKWARDS, 3) == [2, 1]

    async def test_a_read_returns_its_whole_page_beyond_the_drivers_paging(
        self, storage: EventStorage
    ) -> None:
        # Pages may hold up to 10,000 events (EVENTSTORE_READ_PAGE_SIZE); Cassandra's driver
        # pages results by 5,000 rows, and a read once returned only the driver's first page.
        aggregate = unique("agg")
        for start in range(0, 6_000, 200):
            outcome = await storage.append(aggregate, "Order", start, new_events(200), NOW)
            assert isinstance(outcome, Committed)
        forwards = await storage.read(aggregate, 1, Direction.FORWARDS, 6_000)
        assert [e.version for e in forwards] == list(range(1, 6_001))
        backwards = await storage.read(aggregate, None, Direction.BACKWARDS, 5_500)
        assert [e.version for e in backwards] == list(range(6_000, 500, -1))

    async def test_describe(self, storage: EventStorage) -> None:
        aggregate = unique("agg")
        later = NOW.replace(second=59)
        await storage.append(aggregate, "Order", 0, new_events(2), NOW)
        await storage.append(aggregate, "Order", 2, new_events(1), later)
        info = await storage.describe(aggregate)
        assert info is not None
        assert (info.version, info.aggregate_type) == (3, "Order")
        assert (info.first_recorded_at, info.last_recorded_at) == (NOW, later)

    async def test_racing_appends_at_one_version_commit_exactly_one(
        self, storage: EventStorage
    ) -> None:
        aggregate = unique("agg")
        await storage.append(aggregate, "Order", 0, new_events(1), NOW)
        contenders = [new_events(2) for _ in range(8)]
        outcomes = await asyncio.gather(
            *(storage.append(aggregate, "Order", 1, events, NOW) for events in contenders)
        )
        winners = [i for i, o in enumerate(outcomes) if isinstance(o, Committed)]
        assert len(winners) == 1
        assert all(o == Rejected(3, "Order", {}) for o in outcomes if isinstance(o, Rejected))
        read = await storage.read(aggregate, 1, Direction.FORWARDS, 100)
        assert [e.event_id for e in read[1:]] == [e.event_id for e in contenders[winners[0]]]
