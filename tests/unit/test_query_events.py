"""QueryEvents over the in-memory index: pages chained by their tokens, totals, and the
freshness answer."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from eventstore.domain.access import UNRESTRICTED
from eventstore.domain.queries import EventQuery, decode_page_token
from eventstore.usecases.query import QueryEvents
from tests.contract.publisher import recorded
from tests.fakes import InMemoryEventIndex

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def test_pages_chain_through_their_tokens_and_report_the_total() -> None:
    index = InMemoryEventIndex()
    events = [
        replace(e, recorded_at=T0 + timedelta(seconds=e.version))
        for e in recorded("a", "T", range(1, 8))
    ]
    index.add(events)
    query = QueryEvents(index)
    first = EventQuery(aggregate_types=("T",), page_size=3, count_total=True)
    request, seen = first, []
    while True:
        page = await query(request, UNRESTRICTED)
        assert page.total_hits == 7
        seen.append([e.version for e in page.events])
        if not page.next_page_token:
            break
        # What the servicer does with the token the client sends back.
        request = replace(first, after=decode_page_token(first, page.next_page_token))
    assert seen == [[1, 2, 3], [4, 5, 6], [7]]
    assert (await query(replace(first, count_total=False), UNRESTRICTED)).total_hits is None


async def test_freshness_says_whether_the_callers_event_is_visible() -> None:
    index = InMemoryEventIndex()
    (event,) = recorded("a", "T", range(1, 2))
    query = QueryEvents(index)
    asked = EventQuery(visible_event_id=event.event_id)
    assert not (await query(asked, UNRESTRICTED)).freshness.event_visible
    index.add([event])
    page = await query(asked, UNRESTRICTED)
    assert page.freshness.event_visible
    assert page.events == [event]
