"""Reconciliation without services: version ranges, the comparison of copies with the store,
and reconcile() over the in-memory store, a catalog and scripted copies."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventstore.domain.errors import StorageUnavailable
from eventstore.domain.events import Direction, NewEvent, RecordedEvent
from eventstore.ports import AggregateCatalog, Committed
from eventstore.storage.memory import InMemoryEventStorage
from replayer.comparison import (
    EventRef,
    KafkaFindings,
    Stored,
    Tally,
    Versions,
    Window,
    index_findings,
    kafka_findings,
    late_versions,
)
from replayer.scans import CopyScan, Visit, micros
from replayer.summary import ranges, render
from replayer.verify import reconcile
from tests.fakes import RecordingPublisher

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
AS_OF = T0 + timedelta(days=30)

# --- Versions -----------------------------------------------------------------------------


@given(st.lists(st.integers(min_value=1, max_value=60), max_size=80))
def test_versions_behave_like_a_set(values: list[int]) -> None:
    versions = Versions()
    seen: set[int] = set()
    for value in values:
        assert versions.add(value) == (value not in seen)
        seen.add(value)
    assert list(versions) == sorted(seen)
    assert len(versions) == len(seen)
    assert all((v in versions) == (v in seen) for v in range(0, 62))
    spans = versions.ranges()
    assert all(a <= b for a, b in spans)
    assert all(b + 1 < c for (_, b), (c, _) in itertools.pairwise(spans)), spans


@given(
    st.sets(st.integers(min_value=1, max_value=50)), st.sets(st.integers(min_value=1, max_value=50))
)
def test_versions_minus(left: set[int], right: set[int]) -> None:
    a, b = Versions(), Versions()
    for value in sorted(left, reverse=True):
        a.add(value)
    for value in right:
        b.add(value)
    assert list(a.minus(b)) == sorted(left - right)


def test_versions_in_order_stay_one_range() -> None:
    versions = Versions()
    for value in range(1, 10_001):
        versions.add(value)
    assert versions.ranges() == [(1, 10_000)]
    assert not versions.add(5000)


# --- comparison -----------------------------------------------------------------------------


def stored_of(count: int, aggregate_id: str = "a-1") -> tuple[Stored, list[uuid.UUID]]:
    ids = [uuid.uuid4() for _ in range(count)]
    stored = Stored(aggregate_id, "T")
    for version, event_id in enumerate(ids, start=1):
        stored.add(version, event_id, in_range=True)
    return stored, ids


def test_kafka_copies_missing_out_of_order_repeated_and_extra() -> None:
    stored, ids = stored_of(6)
    tally = Tally()
    stranger = uuid.uuid4()
    for version, event_id in [
        (1, ids[0]),
        (2, ids[1]),
        (4, ids[3]),
        (3, ids[2]),  # after 4: out of order
        (3, ids[2]),  # a repeat
        (5, stranger),  # version 5 with another event id: extra, and 5 stays missing
        (9, uuid.uuid4()),  # beyond the head: extra
    ]:
        tally.observe(stored, version, event_id.bytes, in_range=True)
    found = kafka_findings(stored, tally)
    assert [r.version for r in found.missing] == [5, 6]
    assert found.missing[0] == EventRef(5, ids[4])
    assert found.out_of_order == (3,)
    assert found.repeats == 1
    assert [r.version for r in found.extra] == [5, 9]
    assert found.extra[0].event_id == stranger
    assert not found.ok
    # Republishing 5 and 6 puts them after 4, the highest there: in order (both above it).
    assert late_versions(found, tally) == ()


def test_republished_versions_below_the_highest_record_are_late() -> None:
    stored, ids = stored_of(4)
    tally = Tally()
    for version in (1, 2, 4):
        tally.observe(stored, version, ids[version - 1].bytes, in_range=True)
    found = kafka_findings(stored, tally)
    assert [r.version for r in found.missing] == [3]
    assert late_versions(found, tally) == (3,)
    resent = KafkaFindings(missing=found.missing, republished=1, late=(3,))
    assert not resent.ok
    assert KafkaFindings(missing=found.missing, republished=1).ok


def test_records_in_two_partitions_are_reported() -> None:
    stored, ids = stored_of(2)
    tally = Tally()
    tally.observe(stored, 1, ids[0].bytes, True, partition=0)
    tally.observe(stored, 2, ids[1].bytes, True, partition=1)
    assert kafka_findings(stored, tally).split


def test_index_repeats_are_listed_per_version() -> None:
    stored, ids = stored_of(3)
    tally = Tally()
    for version in (1, 2, 2, 2):
        tally.observe(stored, version, ids[version - 1].bytes, True, keep_repeated=True)
    found = index_findings(stored, tally)
    assert found.repeated == ((2, 3),)
    assert [r.version for r in found.missing] == [3]


def test_scope_leaves_out_events_outside_the_window_and_recent_ones() -> None:
    window = Window(start=micros(T0), end=micros(T0 + timedelta(hours=1)), as_of=micros(AS_OF))
    assert not window.contains(micros(T0 - timedelta(seconds=1)))
    assert window.contains(micros(T0))
    assert not window.contains(micros(T0 + timedelta(hours=1)))
    open_ended = Window(None, None, micros(AS_OF))
    assert open_ended.recent(micros(AS_OF))
    assert not open_ended.contains(micros(AS_OF))
    stored = Stored("a", "T")
    stored.add(1, uuid.uuid4(), in_range=False)
    stored.add(2, uuid.uuid4(), in_range=True)
    stored.add(3, uuid.uuid4(), in_range=False, recent=True)
    found = kafka_findings(stored, Tally())
    assert [r.version for r in found.missing] == [2]
    assert stored.recent == 1


def test_deferred_copies_are_compared_once_the_store_is_known() -> None:
    stored, ids = stored_of(2)
    tally = Tally()
    tally.defer(2, ids[1].bytes, True)
    tally.defer(1, ids[0].bytes, True)
    tally.resolve(stored)
    assert kafka_findings(stored, tally).out_of_order == (1,)
    unknown = Tally()
    unknown.defer(1, ids[0].bytes, True)
    unknown.defer(2, ids[1].bytes, False)  # outside the time range: not reported
    unknown.resolve(None)
    assert [r.version for r in unknown.extra] == [1]


def test_ranges_text() -> None:
    assert ranges([1, 2, 3, 5, 7, 8]) == "1-3, 5, 7-8"
    assert "more ranges" in ranges(range(1, 40, 2))


# --- reconcile over fakes -------------------------------------------------------------------


class MemoryCatalog(AggregateCatalog):
    def __init__(self) -> None:
        self.days: dict[tuple[str, date], list[str]] = {}
        self.first: dict[str, date] = {}

    async def register_type(self, aggregate_type: str, at: datetime) -> str | None:
        self.first.setdefault(aggregate_type, at.date())
        return None

    async def add(self, entries: Sequence[tuple[str, str]], at: datetime) -> None:
        for aggregate_type, aggregate_id in entries:
            self.days.setdefault((aggregate_type, at.date()), []).append(aggregate_id)

    async def types(self) -> dict[str, date]:
        return dict(self.first)

    async def aggregates(self, aggregate_type: str, day: date) -> list[str]:
        return list(self.days.get((aggregate_type, day), []))


Copy = tuple[str, int, uuid.UUID, datetime, int]


class ScriptedCopy(CopyScan):
    def __init__(self, name: str, copies: list[Copy]) -> None:
        self.name = name
        self.copies = copies
        self.opened = self.closed = False

    def open(self) -> None:
        self.opened = True

    def scan(self, visit: Visit) -> int:
        for aggregate_id, version, event_id, at, partition in self.copies:
            visit(aggregate_id, version, event_id.bytes, micros(at), partition)
        return len(self.copies)

    def close(self) -> None:
        self.closed = True


async def append(
    storage: InMemoryEventStorage,
    catalog: MemoryCatalog | None,
    aggregate_id: str,
    count: int,
    at: datetime,
    aggregate_type: str = "T",
) -> list[uuid.UUID]:
    if catalog is not None:
        await catalog.register_type(aggregate_type, at)
        await catalog.add([(aggregate_type, aggregate_id)], at)
    events = [NewEvent(uuid.uuid4(), "E", b"{}", "application/json") for _ in range(count)]
    state = await storage.stream_state(aggregate_id)
    outcome = await storage.append(aggregate_id, aggregate_type, state.version, events, at)
    assert isinstance(outcome, Committed)
    return [e.event_id for e in events]


def copies_of(aggregate_id: str, ids: list[uuid.UUID], versions: Sequence[int]) -> list[Copy]:
    return [(aggregate_id, v, ids[v - 1], T0, 0) for v in versions]


async def test_reconcile_finds_what_each_copy_lacks_and_republishes_it() -> None:
    storage, catalog = InMemoryEventStorage(), MemoryCatalog()
    a = await append(storage, catalog, "a", 5, T0)
    b = await append(storage, catalog, "b", 3, T0 + timedelta(days=1))
    c = await append(storage, None, "c", 2, T0)  # not in the catalog
    topic = ScriptedCopy(
        "events.T",
        copies_of("a", a, [1, 2, 4, 5, 5])
        + copies_of("b", b, [1, 2, 3])
        + copies_of("c", c, [1])
        + [("ghost", 1, uuid.uuid4(), T0, 0)],
    )
    index = ScriptedCopy("idx", copies_of("a", a, [1, 2, 3, 4, 5, 5]) + copies_of("b", b, [1, 2]))
    publisher = RecordingPublisher()
    report = await reconcile(
        storage, catalog, "T", topic=topic, index=index, publisher=publisher, as_of=AS_OF
    )
    assert topic.opened
    assert topic.closed
    assert index.closed
    assert report.aggregates == 3
    assert report.events == 10
    assert report.uncataloged == ("c",)
    assert report.missing_from_kafka() == {"a": [3], "c": [2]}
    found = report.by_aggregate()
    assert found["a"].kafka.repeats == 1
    assert found["a"].kafka.late == (3,), "3 goes out after 4 and 5"
    assert found["c"].kafka.late == ()
    assert [r.version for r in found["ghost"].kafka.extra] == [1]
    assert report.missing_from_index() == {"b": [3], "c": [1, 2]}
    assert found["a"].index.repeated == ((5, 2),)
    assert [(e.aggregate_id, e.version) for e in publisher.records] == [("a", 3), ("c", 2)]
    assert report.republished == 2
    assert not report.ok
    json.dumps(report.to_dict())
    text = render(report)
    assert "a (5 events compared):" in text
    assert "PROBLEMS" in text


async def test_reconcile_days_and_one_aggregate_limit_the_scope() -> None:
    storage, catalog = InMemoryEventStorage(), MemoryCatalog()
    a = await append(storage, catalog, "a", 2, T0)
    b = await append(storage, catalog, "b", 2, T0 + timedelta(days=2))
    topic = ScriptedCopy("events.T", copies_of("a", a, [1]) + copies_of("b", b, [2]))
    later = await reconcile(
        storage,
        catalog,
        "T",
        topic=topic,
        index=None,
        since_day=(T0 + timedelta(days=1)).date(),
        as_of=AS_OF,
    )
    assert later.missing_from_kafka() == {"b": [1]}
    assert later.uncataloged == ()
    only_a = await reconcile(
        storage, catalog, "T", topic=topic, index=None, aggregate_ids=["a"], as_of=AS_OF
    )
    assert only_a.missing_from_kafka() == {"a": [2]}
    assert only_a.aggregates == 1


async def test_reconcile_clean_and_recent_events_left_out() -> None:
    storage, catalog = InMemoryEventStorage(), MemoryCatalog()
    a = await append(storage, catalog, "a", 3, T0)
    await append(storage, catalog, "a", 2, AS_OF + timedelta(seconds=1))  # after the start
    topic = ScriptedCopy("events.T", copies_of("a", a, [1, 2, 3]))
    index = ScriptedCopy("idx", copies_of("a", a, [1, 2, 3]))
    report = await reconcile(storage, catalog, "T", topic=topic, index=index, as_of=AS_OF)
    assert report.ok, report.to_dict()
    assert (report.events, report.recent) == (3, 2)
    assert "OK" in render(report)


@pytest.mark.parametrize(
    ("start", "end", "missing"),
    [(T0 + timedelta(hours=1), None, [3]), (None, T0 + timedelta(hours=1), [1, 2])],
)
async def test_reconcile_time_range(
    start: datetime | None, end: datetime | None, missing: list[int]
) -> None:
    storage, catalog = InMemoryEventStorage(), MemoryCatalog()
    await append(storage, catalog, "a", 2, T0)
    await append(storage, catalog, "a", 1, T0 + timedelta(hours=2))
    report = await reconcile(
        storage,
        catalog,
        "T",
        topic=ScriptedCopy("events.T", []),
        index=None,
        start=start,
        end=end,
        as_of=AS_OF,
    )
    assert report.missing_from_kafka() == {"a": missing}


class FlakyStorage(InMemoryEventStorage):
    """Fails the first read of each aggregate, as a loaded cluster's timeout would."""

    def __init__(self) -> None:
        super().__init__()
        self.failed: set[str] = set()

    async def read(
        self, aggregate_id: str, start: int | None, direction: Direction, limit: int
    ) -> list[RecordedEvent]:
        if aggregate_id not in self.failed:
            self.failed.add(aggregate_id)
            raise StorageUnavailable("Cassandra: OperationTimedOut")
        return await super().read(aggregate_id, start, direction, limit)


async def test_reconcile_asks_again_when_a_read_fails_once() -> None:
    storage, catalog = FlakyStorage(), MemoryCatalog()
    a = await append(storage, catalog, "a", 2, T0)
    topic = ScriptedCopy("events.T", copies_of("a", a, [1, 2]))
    report = await reconcile(storage, catalog, "T", topic=topic, index=None, as_of=AS_OF)
    assert report.ok
    assert report.events == 2
