"""AppendEvents over the in-memory store: the expected-version rules, conflicts and what they
report, idempotent and partial retries, and racing writers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from eventstore.domain.access import UNRESTRICTED, Operation, Principal
from eventstore.domain.errors import EventIdReused, InvalidArgument, WrongExpectedVersion
from eventstore.domain.events import (
    AppendRequest,
    AppendResult,
    Direction,
    ExpectedVersion,
    NewEvent,
)
from eventstore.ports import AppendOutcome, Rejected, StreamState
from eventstore.storage.memory import InMemoryEventStorage
from eventstore.usecases.append import AppendEvents, ContentionExhausted
from tests.contract.storage import new_events

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ANY, NO_STREAM, EXISTS = (
    ExpectedVersion.any(),
    ExpectedVersion.no_stream(),
    ExpectedVersion.stream_exists(),
)


def exact(version: int) -> ExpectedVersion:
    return ExpectedVersion.exact(version)


class Store:
    def __init__(self, storage: InMemoryEventStorage | None = None) -> None:
        self.storage = storage or InMemoryEventStorage()
        self.append = AppendEvents(self.storage, clock=lambda: NOW)

    async def at(self, version: int, aggregate: str = "a") -> None:
        """Bring the aggregate to `version`."""
        if version:
            await self.storage.append(aggregate, "T", 0, new_events(version), NOW)

    async def __call__(
        self,
        expected: ExpectedVersion,
        events: Sequence[NewEvent] | int = 1,
        aggregate: str = "a",
        aggregate_type: str = "T",
    ) -> AppendResult:
        batch = new_events(events) if isinstance(events, int) else events
        request = AppendRequest(aggregate, aggregate_type, expected, tuple(batch))
        return await self.append(request, UNRESTRICTED)

    async def versions(self, aggregate: str = "a") -> list[int]:
        return [e.version for e in await self.storage.read(aggregate, 1, Direction.FORWARDS, 1000)]


@pytest.mark.parametrize(
    ("expected", "head", "first"),
    [
        (ANY, 0, 1),
        (ANY, 3, 4),
        (NO_STREAM, 0, 1),
        (EXISTS, 3, 4),
        (exact(0), 0, 1),
        (exact(3), 3, 4),
    ],
    ids=str,
)
async def test_an_admitted_expectation_appends_after_the_head(
    expected: ExpectedVersion, head: int, first: int
) -> None:
    store = Store()
    await store.at(head)
    result = await store(expected, 2)
    assert (result.first_version, result.last_version) == (first, first + 1)
    assert (result.committed_at, result.already_committed) == (NOW, False)
    assert await store.versions() == list(range(1, first + 2))


@pytest.mark.parametrize(
    ("expected", "head"),
    [(NO_STREAM, 3), (EXISTS, 0), (exact(0), 3), (exact(2), 3), (exact(4), 3), (exact(1), 0)],
    ids=str,
)
async def test_a_refused_expectation_reports_expected_and_actual_and_writes_nothing(
    expected: ExpectedVersion, head: int
) -> None:
    store = Store()
    await store.at(head)
    with pytest.raises(WrongExpectedVersion) as conflict:
        await store(expected, 2)
    assert (conflict.value.aggregate_id, conflict.value.expected) == ("a", expected)
    assert conflict.value.actual == head
    assert await store.versions() == list(range(1, head + 1))


async def test_another_aggregate_type_is_refused_naming_the_field() -> None:
    store = Store()
    await store.at(1)
    for expected in (ANY, exact(1)):
        with pytest.raises(InvalidArgument) as refused:
            await store(expected, aggregate_type="Other")
        assert [v.field for v in refused.value.violations] == ["aggregate_type"]
    assert await store.versions() == [1]


@pytest.mark.parametrize("expected", [ANY, NO_STREAM, exact(0)], ids=str)
async def test_a_retry_of_a_committed_append_gets_the_original_result(
    expected: ExpectedVersion,
) -> None:
    store = Store()
    events = new_events(3)
    original = await store(expected, events)
    await store(ANY, 1)  # someone else appended meanwhile
    retry = await store(expected, events)
    assert retry.already_committed
    assert (retry.first_version, retry.last_version, retry.committed_at) == (
        original.first_version,
        original.last_version,
        original.committed_at,
    )
    assert retry.event_ids == original.event_ids
    assert await store.versions() == [1, 2, 3, 4]


async def test_a_retry_of_an_append_to_an_existing_stream_is_answered_too() -> None:
    store = Store()
    await store.at(2)
    events = new_events(2)
    original = await store(EXISTS, events)
    retry = await store(EXISTS, events)
    assert retry.already_committed
    assert retry.first_version == original.first_version == 3


@pytest.mark.parametrize(
    ("resent", "field"),
    [
        (lambda committed, new: [*committed, new], "events[0].event_id"),  # prefix committed
        (lambda committed, new: [new, committed[1]], "events[1].event_id"),  # one of them
        (lambda committed, new: [committed[1], committed[0]], "events[0].event_id"),  # reordered
    ],
    ids=["prefix", "later-one", "reordered"],
)
async def test_a_partly_committed_retry_is_invalid_and_writes_nothing(
    resent: Callable[[list[NewEvent], NewEvent], list[NewEvent]], field: str
) -> None:
    store = Store()
    committed = new_events(2)
    await store(exact(0), committed)
    for expected in (ANY, exact(0), exact(2)):
        with pytest.raises(InvalidArgument) as refused:
            await store(expected, resent(committed, new_events(1)[0]))
        assert [v.field for v in refused.value.violations] == [field]
        assert "already committed" in refused.value.violations[0].description
    assert await store.versions() == [1, 2]


@pytest.mark.parametrize(
    ("change", "differs"),
    [
        ({"data": b'{"other": true}'}, "data"),
        ({"event_type": "Other"}, "event_type"),
        ({"metadata": {"trace": "t-2"}}, "metadata"),
        ({"content_type": "application/octet-stream"}, "content_type"),
    ],
    ids=["data", "event_type", "metadata", "content_type"],
)
async def test_a_retry_with_other_content_is_a_conflict_not_a_success(
    change: dict[str, object], differs: str
) -> None:
    store = Store()
    committed = [replace(e, metadata={"trace": "t-1"}) for e in new_events(2)]
    await store(exact(0), committed)
    resent = [committed[0], replace(committed[1], **change)]  # type: ignore[arg-type]
    for expected in (ANY, exact(0), NO_STREAM):
        with pytest.raises(EventIdReused) as refused:
            await store(expected, resent)
        assert (refused.value.field, refused.value.version) == ("events[1]", 2)
        assert f"another {differs}" in str(refused.value)
    assert await store.versions() == [1, 2]
    assert (await store(ANY, committed)).already_committed  # the very same events still are


async def test_the_type_is_checked_before_committed_ids_are_answered() -> None:
    """Resending another type's committed ids must not return their versions and time."""
    store = Store()
    committed = new_events(2)
    await store(exact(0), committed, aggregate="order-1", aggregate_type="Order")
    payments = Principal("payments", {Operation.APPEND: frozenset({"Payment"})})
    for expected in (ANY, exact(0), exact(2), NO_STREAM, EXISTS):
        request = AppendRequest("order-1", "Payment", expected, tuple(committed))
        with pytest.raises(InvalidArgument) as refused:
            await store.append(request, payments)
        (violation,) = refused.value.violations
        assert violation.field == "aggregate_type"
        assert "Order" not in violation.description  # nor its type, to one that cannot see it
    auditor = Principal(
        "auditor", {Operation.APPEND: frozenset({"Payment"}), Operation.READ: frozenset({"*"})}
    )
    request = AppendRequest("order-1", "Payment", ANY, tuple(committed))
    with pytest.raises(InvalidArgument, match="'Order'"):
        await store.append(request, auditor)
    assert await store.versions("order-1") == [1, 2]


class YieldingStorage(InMemoryEventStorage):
    """Lets every concurrent writer read the head before any writes: real races."""

    async def stream_state(self, aggregate_id: str) -> StreamState:
        state = await super().stream_state(aggregate_id)
        await asyncio.sleep(0)
        return state


async def test_racing_any_appends_all_commit_without_gap_or_duplicate() -> None:
    store = Store(YieldingStorage())
    results = await asyncio.gather(*(store(ANY, 2) for _ in range(20)))
    spans = sorted((r.first_version, r.last_version) for r in results)
    assert spans == [(v, v + 1) for v in range(1, 41, 2)]
    events = await store.storage.read("a", 1, Direction.FORWARDS, 100)
    assert len({e.event_id for e in events}) == 40


async def test_racing_exact_appends_commit_exactly_one() -> None:
    store = Store()
    outcomes = await asyncio.gather(
        *(store(exact(0), 2) for _ in range(10)), return_exceptions=True
    )
    winners = [o for o in outcomes if isinstance(o, AppendResult)]
    assert len(winners) == 1
    losers = [o for o in outcomes if not isinstance(o, AppendResult)]
    assert all(isinstance(o, WrongExpectedVersion) and o.actual == 2 for o in losers)
    assert await store.versions() == [1, 2]


async def test_a_writer_that_keeps_losing_gives_up_retryably() -> None:
    class AlwaysAhead(InMemoryEventStorage):
        """Another writer commits right before each of ours."""

        head = 0

        async def append(self, *args: object, **kwargs: object) -> AppendOutcome:
            await InMemoryEventStorage.append(self, "a", "T", self.head, new_events(1), NOW)
            self.head += 1
            return await super().append(*args, **kwargs)  # type: ignore[arg-type]

    storage = AlwaysAhead()
    append = AppendEvents(storage, max_attempts=3)
    request = AppendRequest("a", "T", ANY, tuple(new_events(1)))
    with pytest.raises(ContentionExhausted) as exhausted:
        await append(request, UNRESTRICTED)
    assert exhausted.value.attempts == 3
    ids = {e.event_id for e in await storage.read("a", 1, Direction.FORWARDS, 100)}
    assert request.events[0].event_id not in ids


async def test_a_write_resolved_as_not_applied_is_written_again() -> None:
    """An unknown outcome the adapter resolved as "not applied" comes back as a refusal at
    the very version and type expected, naming no id: writing again is safe."""

    class NotAppliedOnce(InMemoryEventStorage):
        refusals = 0

        async def append(
            self,
            aggregate_id: str,
            aggregate_type: str,
            expected_version: int,
            events: Sequence[NewEvent],
            recorded_at: datetime,
        ) -> AppendOutcome:
            if not self.refusals:
                self.refusals += 1
                return Rejected(expected_version, None)
            return await super().append(
                aggregate_id, aggregate_type, expected_version, events, recorded_at
            )

    store = Store(NotAppliedOnce())
    assert (await store(exact(0), 2)).last_version == 2
    assert await store.versions() == [1, 2]
