"""The EventLog contract: what Subscribe relies on from the published log (Kafka). Every
adapter's test class subclasses this and provides `log`, `publish` (puts events into the log
and returns once they are there) and `partitions` (per topic)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from eventstore.domain.events import RecordedEvent
from eventstore.ports import EventLog, LogReader, LogRecord
from eventstore.wire.records import murmur2_partition
from tests.contract.publisher import recorded
from tests.support import unique

Publish = Callable[[Sequence[RecordedEvent]], Awaitable[None]]


def new_type() -> str:
    return unique("T").replace("-", "")


async def read_records(
    reader: LogReader, count: int, quiet_s: float, timeout_s: float = 30.0
) -> list[LogRecord]:
    """Read until `count` records arrived (or the time is up), then once more and for
    `quiet_s`, to catch records that should not be there."""
    records: list[LogRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count and time.monotonic() < deadline:
        records += await reader.read(100)
    end = time.monotonic() + quiet_s
    records += await reader.read(100)
    while time.monotonic() < end:
        records += await reader.read(100)
    return records


def ids(records: Sequence[LogRecord]) -> list[tuple[str, int]]:
    return [(r.event.aggregate_id, r.event.version) for r in records]


def other_partition_id(aggregate_id: str, partitions: int) -> str:
    """An aggregate id whose records go to another partition than `aggregate_id`'s."""
    mine = murmur2_partition(aggregate_id.encode(), partitions)
    while True:
        other = unique("other")
        if murmur2_partition(other.encode(), partitions) != mine:
            return other


class EventLogContract:
    #: How long to keep reading for records that should not come (a fake has them at once).
    quiet_s = 0.5

    async def test_from_the_beginning_in_order_with_positions(
        self, log: EventLog, publish: Publish
    ) -> None:
        aggregate_type = new_type()
        a = recorded(unique("a"), aggregate_type, range(1, 4))
        b = recorded(unique("b"), aggregate_type, range(1, 3))
        await publish(a[:2])
        await publish(b)
        await publish(a[2:])
        reader = await log.open(frozenset({aggregate_type}), "beginning")
        try:
            assert not reader.caught_up(reader.start_positions())
            records = await read_records(reader, 5, self.quiet_s)
        finally:
            await reader.close()
        assert [r.event for r in records if r.event.aggregate_id == a[0].aggregate_id] == a
        assert [r.event for r in records if r.event.aggregate_id == b[0].aggregate_id] == b
        assert {r.aggregate_type for r in records} == {aggregate_type}
        by_partition: dict[int, list[int]] = {}
        for record in records:
            by_partition.setdefault(record.partition, []).append(record.offset)
        # An aggregate keeps to one partition, where offsets count up from 0 without a gap.
        assert len({r.partition for r in records if r.event.aggregate_id == a[0].aggregate_id}) == 1
        for offsets in by_partition.values():
            assert offsets == list(range(len(offsets)))
        positions = {(aggregate_type, p): len(o) for p, o in by_partition.items()}
        assert reader.caught_up(positions)

    async def test_only_the_wanted_types(self, log: EventLog, publish: Publish) -> None:
        wanted, other = new_type(), new_type()
        await publish(recorded(unique("x"), other, range(1, 3)))
        await publish(recorded(unique("w"), wanted, range(1, 3)))
        reader = await log.open(frozenset({wanted}), "beginning")
        try:
            records = await read_records(reader, 2, self.quiet_s)
        finally:
            await reader.close()
        assert [r.event.version for r in records] == [1, 2]
        assert {r.aggregate_type for r in records} == {wanted}

    async def test_from_the_end_only_what_comes_later(
        self, log: EventLog, publish: Publish
    ) -> None:
        aggregate_type = new_type()
        aggregate = unique("a")
        await publish(recorded(aggregate, aggregate_type, range(1, 3)))
        reader = await log.open(frozenset({aggregate_type}), "end")
        try:
            assert reader.caught_up(reader.start_positions())
            assert await read_records(reader, 0, self.quiet_s) == []
            await publish(recorded(aggregate, aggregate_type, range(3, 5)))
            records = await read_records(reader, 2, self.quiet_s)
        finally:
            await reader.close()
        assert ids(records) == [(aggregate, 3), (aggregate, 4)]

    async def test_from_a_time_the_first_record_recorded_at_or_after_it_per_partition(
        self, log: EventLog, publish: Publish, partitions: int
    ) -> None:
        aggregate_type = new_type()
        a = unique("a")
        b = other_partition_id(a, partitions)
        noon = datetime(2026, 3, 1, 12, tzinfo=UTC)

        def at(events: list[RecordedEvent], minutes: list[int]) -> list[RecordedEvent]:
            return [
                replace(e, recorded_at=noon + timedelta(minutes=m))
                for e, m in zip(events, minutes, strict=True)
            ]

        # a: 11:58, 11:59, 12:00, 12:01 (two before the time); then one recorded at 11:50 but
        # published after them (as the relay may). b: only 11:00, before the time.
        late = at(recorded(a, aggregate_type, range(5, 6)), [-10])
        await publish(at(recorded(a, aggregate_type, range(1, 5)), [-2, -1, 0, 1]))
        await publish(at(recorded(b, aggregate_type, range(1, 2)), [-60]))
        await publish(late)
        reader = await log.open(frozenset({aggregate_type}), noon)
        try:
            assert not reader.caught_up(reader.start_positions())
            records = await read_records(reader, 3, self.quiet_s)
            # b's partition starts at its end: nothing there at or after the time.
            ends = {(r.aggregate_type, r.partition): r.offset + 1 for r in records}
            assert reader.caught_up({**reader.start_positions(), **ends})
        finally:
            await reader.close()
        # From a's 12:00 record on, in log order; the late one comes along (the reader does
        # not filter: the subscription drops what was recorded before its time).
        assert ids(records) == [(a, 3), (a, 4), (a, 5)]

    async def test_resumes_exactly_after_the_positions_read(
        self, log: EventLog, publish: Publish
    ) -> None:
        aggregate_type = new_type()
        events = recorded(unique("a"), aggregate_type, range(1, 6))
        await publish(events[:3])
        first = await log.open(frozenset({aggregate_type}), "beginning")
        try:
            positions = first.start_positions()
            for record in await read_records(first, 3, self.quiet_s):
                positions[(record.aggregate_type, record.partition)] = record.offset + 1
        finally:
            await first.close()
        await publish(events[3:])
        resumed = await log.open(frozenset({aggregate_type}), positions)
        try:
            assert resumed.start_positions() == positions
            records = await read_records(resumed, 2, self.quiet_s)
        finally:
            await resumed.close()
        assert [r.event for r in records] == events[3:]

    async def test_all_types_includes_a_type_that_appears_later(
        self, log: EventLog, publish: Publish
    ) -> None:
        early, late = new_type(), new_type()
        await publish(recorded(unique("e"), early, range(1, 2)))
        reader = await log.open(frozenset(), "end")
        try:
            await publish(recorded(unique("l"), late, range(1, 3)))
            # A new topic is read from its start, whatever the reader's own start was.
            records = await read_records(reader, 2, self.quiet_s)
        finally:
            await reader.close()
        assert [(r.aggregate_type, r.event.version) for r in records] == [(late, 1), (late, 2)]

    async def test_a_key_reads_only_its_partition(
        self, log: EventLog, publish: Publish, partitions: int
    ) -> None:
        aggregate_type = new_type()
        mine = unique("mine")
        other = other_partition_id(mine, partitions)
        await publish(recorded(mine, aggregate_type, range(1, 3)))
        await publish(recorded(other, aggregate_type, range(1, 3)))
        reader = await log.open(frozenset({aggregate_type}), "beginning", key=mine)
        try:
            assert len(reader.start_positions()) == 1
            records = await read_records(reader, 2, self.quiet_s)
        finally:
            await reader.close()
        assert ids(records) == [(mine, 1), (mine, 2)]
        assert {r.partition for r in records} == {murmur2_partition(mine.encode(), partitions)}

    async def test_repeated_copies_are_all_kept(self, log: EventLog, publish: Publish) -> None:
        """Publication is at least once: the log keeps every copy; readers drop repeats."""
        aggregate_type = new_type()
        events = recorded(unique("a"), aggregate_type, range(1, 3))
        await publish(events)
        await publish(events[1:])
        reader = await log.open(frozenset({aggregate_type}), "beginning")
        try:
            records = await read_records(reader, 3, self.quiet_s)
        finally:
            await reader.close()
        assert [r.event.version for r in records] == [1, 2, 2]
