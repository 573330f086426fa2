"""ReadAggregate and DescribeAggregate over the in-memory store: pages forwards and
backwards, bounded by the page size and the caller's count; missing aggregates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from eventstore.domain.access import UNRESTRICTED
from eventstore.domain.errors import AggregateNotFound
from eventstore.domain.events import Direction, RecordedEvent
from eventstore.domain.validation import ReadRequest
from eventstore.storage.memory import InMemoryEventStorage
from eventstore.usecases.read import DescribeAggregate, ReadAggregate
from tests.contract.storage import new_events

NOW = datetime(2026, 1, 1, tzinfo=UTC)
FORWARDS, BACKWARDS = Direction.FORWARDS, Direction.BACKWARDS


class CountingStorage(InMemoryEventStorage):
    def __init__(self) -> None:
        super().__init__()
        self.limits: list[int] = []

    async def read(
        self, aggregate_id: str, start: int | None, direction: Direction, limit: int
    ) -> list[RecordedEvent]:
        self.limits.append(limit)
        return await super().read(aggregate_id, start, direction, limit)


@pytest.fixture
async def storage() -> CountingStorage:
    storage = CountingStorage()
    await storage.append("a", "T", 0, new_events(10), NOW)
    return storage


async def pages(
    storage: InMemoryEventStorage,
    start: int | None,
    direction: Direction,
    max_count: int | None = None,
    page_size: int = 3,
) -> list[list[int]]:
    read = ReadAggregate(storage, page_size)
    request = ReadRequest("a", start, direction, max_count)
    return [[e.version for e in page] async for page in read.pages(request, UNRESTRICTED)]


@pytest.mark.parametrize(
    ("start", "direction", "max_count", "expected"),
    [
        (1, FORWARDS, None, [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10]]),
        (1, FORWARDS, 5, [[1, 2, 3], [4, 5]]),
        (8, FORWARDS, None, [[8, 9, 10]]),
        (11, FORWARDS, None, []),
        (None, BACKWARDS, None, [[10, 9, 8], [7, 6, 5], [4, 3, 2], [1]]),
        (5, BACKWARDS, 4, [[5, 4, 3], [2]]),
        (2, BACKWARDS, None, [[2, 1]]),
        (30, BACKWARDS, 2, [[10, 9]]),
    ],
)
async def test_pages(
    storage: CountingStorage,
    start: int | None,
    direction: Direction,
    max_count: int | None,
    expected: list[list[int]],
) -> None:
    assert await pages(storage, start, direction, max_count) == expected
    assert max(storage.limits) <= 3, "never more than a page from the store at once"


async def test_a_whole_last_page_ends_the_read(storage: CountingStorage) -> None:
    assert await pages(storage, 1, FORWARDS, page_size=5) == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    assert await pages(storage, None, BACKWARDS, page_size=5) == [
        [10, 9, 8, 7, 6],
        [5, 4, 3, 2, 1],
    ]


async def test_a_missing_aggregate_is_not_found(storage: CountingStorage) -> None:
    read = ReadAggregate(storage, 3)
    with pytest.raises(AggregateNotFound):
        async for _ in read.pages(ReadRequest("nope", 1, FORWARDS, None), UNRESTRICTED):
            pass
    with pytest.raises(AggregateNotFound):
        await DescribeAggregate(storage)("nope", UNRESTRICTED)


async def test_describe(storage: CountingStorage) -> None:
    later = NOW + timedelta(seconds=5)
    await storage.append("a", "T", 10, new_events(1), later)
    info = await DescribeAggregate(storage)("a", UNRESTRICTED)
    assert (info.aggregate_id, info.aggregate_type, info.version) == ("a", "T", 11)
    assert (info.first_recorded_at, info.last_recorded_at) == (NOW, later)
