"""Read your own writes: an append's consistency token makes a query wait (within the caller's
deadline and the server's limit) until that write is searchable, or fail saying how far
behind the index is."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from eventstore.api.errors import to_status
from eventstore.api.servicer import wait_budget
from eventstore.domain.access import UNRESTRICTED, Operation, Principal
from eventstore.domain.errors import InvalidArgument, NotYetSearchable
from eventstore.domain.events import Direction
from eventstore.domain.queries import (
    EventQuery,
    IndexProgress,
    decode_consistency_token,
    encode_consistency_token,
)
from eventstore.storage.memory import InMemoryEventStorage
from eventstore.usecases.query import QueryEvents
from tests.contract.storage import new_events
from tests.fakes import InMemoryEventIndex
from tests.unit.test_validation import query

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    """Time that moves only when the use case sleeps; a hook runs at each sleep."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[], None] = lambda: None

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        self.on_sleep()


class Lagging(InMemoryEventIndex):
    async def progress(self, permitted_types: frozenset[str] | None = None) -> IndexProgress:
        return IndexProgress(indexer_lag=42, reported_at=NOW, indexed_through=NOW)


def query_for(token: str, **fields: object) -> EventQuery:
    return query(min_consistency_token=token, **fields)


async def written(index: InMemoryEventIndex) -> tuple[str, list[object]]:
    storage = InMemoryEventStorage()
    await storage.append("order-1", "Order", 0, new_events(2), NOW)
    events = await storage.read("order-1", 1, Direction.FORWARDS, 10)
    return encode_consistency_token(events[-1].event_id), list(events)


async def test_waits_until_the_write_is_searchable_then_answers_with_it() -> None:
    index, clock = InMemoryEventIndex(), Clock()
    token, events = await written(index)
    polls = 0

    def indexer_catches_up() -> None:
        nonlocal polls
        polls += 1
        if polls == 4:
            index.add(events)  # type: ignore[arg-type]

    clock.on_sleep = indexer_catches_up
    query = QueryEvents(index, max_wait_s=10, sleep=clock.sleep, clock=clock)
    page = await query(query_for(token), UNRESTRICTED, wait_s=5.0)
    assert [e.version for e in page.events] == [1, 2]
    assert page.freshness.event_visible
    # Looked again soon at first, then less often (the index refreshes every second).
    assert clock.sleeps == pytest.approx([0.05, 0.1, 0.2, 0.25])


@pytest.mark.parametrize(("wait_s", "waited"), [(0.3, 0.3), (None, 2.0), (60.0, 2.0), (0.0, 0.0)])
async def test_gives_up_at_the_callers_deadline_or_the_servers_limit(
    wait_s: float | None, waited: float
) -> None:
    index, clock = Lagging(), Clock()
    token, _ = await written(index)
    query = QueryEvents(index, max_wait_s=2.0, sleep=clock.sleep, clock=clock)
    with pytest.raises(NotYetSearchable) as caught:
        await query(query_for(token), UNRESTRICTED, wait_s=wait_s)
    assert clock.now == pytest.approx(waited)
    assert caught.value.indexer_lag == 42
    status = to_status(caught.value, "r-1")
    assert status.code == 4  # DEADLINE_EXCEEDED
    assert "indexer lag 42 records" in status.message


async def test_a_write_the_caller_may_not_query_is_never_visible_to_it() -> None:
    index, clock = InMemoryEventIndex(), Clock()
    token, events = await written(index)
    index.add(events)  # type: ignore[arg-type]
    payments = Principal("p", {Operation.QUERY: frozenset({"Payment"})})
    query = QueryEvents(index, max_wait_s=1.0, sleep=clock.sleep, clock=clock)
    with pytest.raises(NotYetSearchable):
        await query(query_for(token), payments)
    assert (await query(query_for(token), UNRESTRICTED)).freshness.event_visible


async def test_without_a_token_no_wait() -> None:
    index, clock = InMemoryEventIndex(), Clock()
    page = await QueryEvents(index, sleep=clock.sleep, clock=clock)(
        query_for("", visible_event_id=str(uuid.uuid4())), UNRESTRICTED
    )
    assert not page.freshness.event_visible
    assert clock.sleeps == []


def test_tokens_round_trip_and_bad_ones_are_refused_by_field() -> None:
    event_id = uuid.uuid4()
    assert decode_consistency_token(encode_consistency_token(event_id)) == event_id
    assert query_for(encode_consistency_token(event_id)).visible_event_id == event_id
    for bad in ("x", "eyJ2IjoyfQ", encode_consistency_token(event_id)[:-3]):
        with pytest.raises(InvalidArgument) as caught:
            query_for(bad)
        assert [v.field for v in caught.value.violations] == ["min_consistency_token"]
    with pytest.raises(InvalidArgument) as caught:
        query_for(encode_consistency_token(event_id), visible_event_id=str(event_id))
    assert [v.field for v in caught.value.violations] == ["min_consistency_token"]


def test_the_wait_ends_before_the_callers_deadline() -> None:
    assert wait_budget(None) is None
    assert wait_budget(1.0) == pytest.approx(0.88)
    assert wait_budget(0.01) == 0.0
