"""The EventIndex contract: what QueryEvents relies on from the search index (OpenSearch).
Every adapter's test class subclasses this and provides `index` and `add` (puts events in
the index as the indexer does, and returns once a search sees them)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from eventstore.domain.events import RecordedEvent
from eventstore.domain.queries import Cursor, EventQuery
from eventstore.ports import EventIndex
from tests.contract.publisher import recorded
from tests.support import unique

Add = Callable[[Sequence[RecordedEvent]], Awaitable[None]]

T0 = datetime(2026, 3, 4, 5, 6, 7, 123000, tzinfo=UTC)


def at(event: RecordedEvent, ms: int, event_type: str = "Happened") -> RecordedEvent:
    return replace(event, recorded_at=T0 + timedelta(milliseconds=ms), event_type=event_type)


def keys(events: Sequence[RecordedEvent]) -> list[tuple[str, int]]:
    return [(e.aggregate_id, e.version) for e in events]


async def page_of(
    index: EventIndex, query: EventQuery
) -> tuple[list[RecordedEvent], Cursor | None, int | None]:
    page = await index.search(query)
    return page.events, page.cursor, page.total


async def visible(
    index: EventIndex, event_id: uuid.UUID, permitted: frozenset[str] | None = None
) -> bool:
    query = EventQuery(visible_event_id=event_id, permitted_types=permitted, page_size=1)
    return (await index.search(query)).visible


class EventIndexContract:
    async def test_events_come_back_whole_in_time_then_aggregate_then_version_order(
        self, index: EventIndex, add: Add
    ) -> None:
        aggregate_type = unique("T")
        a, b = unique("a"), unique("b")
        # b sorts after a; a's version 2 is later than b's events.
        events = [
            at(recorded(a, aggregate_type, range(1, 2))[0], 0),
            at(recorded(a, aggregate_type, range(2, 3))[0], 10),
            at(recorded(b, aggregate_type, range(1, 2))[0], 0),
            at(recorded(b, aggregate_type, range(2, 3))[0], 5),
        ]
        await add(events)
        found, cursor, total = await page_of(index, EventQuery(aggregate_types=(aggregate_type,)))
        assert keys(found) == [(a, 1), (b, 1), (b, 2), (a, 2)]
        assert (cursor, total) == (None, None)
        by_id = {e.event_id: e for e in events}
        assert found == [by_id[e.event_id] for e in found]

    async def test_filters_by_type_aggregate_and_permitted_types(
        self, index: EventIndex, add: Add
    ) -> None:
        order, payment = unique("Order"), unique("Payment")
        o1, o2, p1 = unique("o1"), unique("o2"), unique("p1")
        await add(
            [
                at(recorded(o1, order, range(1, 2))[0], 0, "Placed"),
                at(recorded(o1, order, range(2, 3))[0], 1, "Shipped"),
                at(recorded(o2, order, range(1, 2))[0], 2, "Placed"),
                at(recorded(p1, payment, range(1, 2))[0], 3, "Placed"),
            ]
        )
        both = (order, payment)

        async def search(**filters: object) -> list[tuple[str, int]]:
            query = EventQuery(**{"aggregate_types": both, **filters})  # type: ignore[arg-type]
            return keys((await page_of(index, query))[0])

        assert await search() == [(o1, 1), (o1, 2), (o2, 1), (p1, 1)]
        assert await search(event_types=("Placed",)) == [(o1, 1), (o2, 1), (p1, 1)]
        assert await search(event_types=("Shipped", "Nothing")) == [(o1, 2)]
        assert await search(aggregate_types=(payment,)) == [(p1, 1)]
        assert await search(aggregate_id=o1) == [(o1, 1), (o1, 2)]
        assert await search(permitted_types=frozenset({payment})) == [(p1, 1)]
        assert await search(permitted_types=frozenset({unique("None")})) == []

    async def test_time_range_includes_its_start_and_excludes_its_end(
        self, index: EventIndex, add: Add
    ) -> None:
        aggregate_type = unique("T")
        aggregate = unique("a")
        await add([at(e, e.version * 10) for e in recorded(aggregate, aggregate_type, range(1, 5))])
        query = EventQuery(
            aggregate_types=(aggregate_type,),
            start=T0 + timedelta(milliseconds=20),
            end=T0 + timedelta(milliseconds=40),
        )
        assert keys((await page_of(index, query))[0]) == [(aggregate, 2), (aggregate, 3)]
        later = EventQuery(aggregate_types=(aggregate_type,), start=T0 + timedelta(seconds=1))
        assert (await page_of(index, later))[0] == []

    async def test_pages_follow_each_other_and_count_every_match(
        self, index: EventIndex, add: Add
    ) -> None:
        aggregate_type = unique("T")
        events = [at(e, e.version // 2) for e in recorded(unique("a"), aggregate_type, range(1, 8))]
        await add(events)
        query = EventQuery(aggregate_types=(aggregate_type,), page_size=3, count_total=True)
        pages = []
        while True:
            found, cursor, total = await page_of(index, query)
            assert total == 7
            pages.append([e.version for e in found])
            if cursor is None:
                break
            last = found[-1]
            assert cursor == (
                int(last.recorded_at.timestamp() * 1000),
                last.aggregate_id,
                last.version,
            )
            query = replace(query, after=cursor)
        assert pages == [[1, 2, 3], [4, 5, 6], [7]]
        exact = EventQuery(aggregate_types=(aggregate_type,), page_size=7)
        assert (await page_of(index, exact))[1] is not None, "a full page says where it ended"
        assert (await page_of(index, replace(exact, after=(await page_of(index, exact))[1])))[
            :2
        ] == (
            [],
            None,
        )

    async def test_a_redelivered_event_is_one_document(self, index: EventIndex, add: Add) -> None:
        aggregate_type = unique("T")
        events = recorded(unique("a"), aggregate_type, range(1, 3))
        await add(events)
        await add(events[1:])  # the indexer saw a repeated copy
        query = EventQuery(aggregate_types=(aggregate_type,), count_total=True)
        found, _, total = await page_of(index, query)
        assert (keys(found), total) == (keys(events), 2)

    async def test_events_of_two_aggregates_with_one_event_id_are_two_documents(
        self, index: EventIndex, add: Add
    ) -> None:
        # Event ids are the clients' and unique only within an aggregate: another principal's
        # event with the same id must not replace this one.
        mine, theirs = unique("Mine"), unique("Theirs")
        (first,) = recorded(unique("a"), mine, range(1, 2))
        (second,) = recorded(unique("b"), theirs, range(1, 2))
        second = replace(second, event_id=first.event_id, event_type="Other")
        await add([first])
        await add([second])
        for aggregate_type, event in ((mine, first), (theirs, second)):
            query = EventQuery(aggregate_types=(aggregate_type,), count_total=True)
            found, _, total = await page_of(index, query)
            assert (found, total) == ([event], 1), aggregate_type
            assert await visible(index, event.event_id, frozenset({aggregate_type}))
        # Pairs that would run together unless the encoding keeps them apart stay apart too.
        kind, x = unique("T"), unique("x")
        clashing = [
            replace(recorded(x + suffix, kind, range(v, v + 1))[0], event_id=first.event_id)
            for suffix, v in (("", 112), ("1", 12), ("11", 2), ("112", 1))
        ]
        await add(clashing)
        found, _, total = await page_of(
            index, EventQuery(aggregate_types=(kind,), count_total=True)
        )
        assert (sorted(keys(found)), total) == (sorted(keys(clashing)), 4)

    async def test_a_search_says_whether_an_event_is_visible_to_the_caller(
        self, index: EventIndex, add: Add
    ) -> None:
        aggregate_type = unique("T")
        (event,) = recorded(unique("a"), aggregate_type, range(1, 2))
        await add([event])
        assert await visible(index, event.event_id)
        assert await visible(index, event.event_id, frozenset({aggregate_type}))
        assert not await visible(index, event.event_id, frozenset({unique("Other")}))
        assert not await visible(index, uuid.uuid4())
        # Whatever the page's own filters: visibility is about the index, not this page.
        elsewhere = EventQuery(aggregate_types=(unique("Other"),), visible_event_id=event.event_id)
        page = await index.search(elsewhere)
        assert (page.events, page.visible) == ([], True)
        assert not (await index.search(EventQuery(aggregate_types=(aggregate_type,)))).visible
