"""The shared tail over the in-memory log: the event log contract, the hand-over from a
subscription's own reader to the tail without a gap or a repeat while appends go on, and a
slow subscriber that goes back to its own reader without holding up the others."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from eventstore.domain.events import RecordedEvent
from eventstore.ports import LogReader, LogRecord
from eventstore.publishing.shared_tail import SharedTailLog
from tests.contract.log import EventLogContract, Publish
from tests.contract.publisher import recorded
from tests.fakes import InMemoryEventLog


@pytest.fixture
def inner() -> InMemoryEventLog:
    return InMemoryEventLog(partitions=3)


@pytest.fixture
async def shared(inner: InMemoryEventLog) -> AsyncIterator[SharedTailLog]:
    log = SharedTailLog(inner, idle_wait_s=0.01)
    yield log
    await log.close()


class TestSharedTailOverTheInMemoryLog(EventLogContract):
    quiet_s = 0.05  # the tail hands records on after a scheduling step

    @pytest.fixture
    def log(self, shared: SharedTailLog) -> SharedTailLog:
        return shared

    @pytest.fixture
    def partitions(self, inner: InMemoryEventLog) -> int:
        return inner.partitions

    @pytest.fixture
    def publish(self, inner: InMemoryEventLog) -> Publish:
        async def publish(events: Sequence[RecordedEvent]) -> None:
            await (await inner.send(events)).wait()

        return publish


class Reading:
    """Reads a reader in the background (or not, while paused), keeping every record."""

    def __init__(self, reader: LogReader) -> None:
        self.reader = reader
        self.records: list[LogRecord] = []
        self.running = asyncio.Event()
        self.running.set()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self.running.wait()
            self.records += await self.reader.read(50)

    async def until(self, count: int) -> None:
        await until(lambda: len(self.records) >= count)

    def versions(self) -> dict[str, list[int]]:
        by_aggregate: dict[str, list[int]] = {}
        for record in self.records:
            by_aggregate.setdefault(record.event.aggregate_id, []).append(record.event.version)
        return by_aggregate

    async def stop(self) -> None:
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task
        await self.reader.close()


def open_readers(log: InMemoryEventLog) -> int:
    return sum(not reader.closed for reader in log.readers)


async def until(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    for _ in range(int(within_s / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("timed out")


async def test_hand_over_to_the_tail_misses_and_repeats_nothing_under_concurrent_appends(
    inner: InMemoryEventLog, shared: SharedTailLog
) -> None:
    aggregates = [f"a{n}" for n in range(6)]
    written = {a: 0 for a in aggregates}

    async def append(rounds: int, pause_s: float) -> None:
        for n in range(rounds):
            aggregate = aggregates[n % len(aggregates)]
            await inner.send(
                recorded(aggregate, "T", range(written[aggregate] + 1, written[aggregate] + 3))
            )
            written[aggregate] += 2
            await asyncio.sleep(pause_s)

    await append(300, 0)  # history the subscriptions catch up on with their own readers
    writer = asyncio.create_task(append(400, 0.001))  # appends all through the hand-over
    wide = Reading(await shared.open(frozenset(), "beginning"))
    one = Reading(await shared.open(frozenset({"T"}), "beginning", key="a1"))
    await until(lambda: shared.members == 2)
    assert not writer.done(), "the hand-over should happen while appends go on"
    await writer
    total = sum(written.values())
    await wide.until(total)
    await one.until(sum(1 for r in wide.records if r.event.aggregate_id == "a1"))
    await asyncio.sleep(0.05)  # anything extra shows up
    assert wide.versions() == {a: list(range(1, written[a] + 1)) for a in aggregates}
    assert len(wide.records) == total
    offsets = [(r.aggregate_type, r.partition, r.offset) for r in wide.records]
    assert len(set(offsets)) == len(offsets)
    assert one.versions()["a1"] == list(range(1, written["a1"] + 1))
    assert {r.partition for r in one.records} == {inner.partition_of("a1")}
    # Live: the two subscriptions' own readers are closed, only the tail reads the log.
    assert open_readers(inner) == 1
    await wide.stop()
    await one.stop()
    assert shared.members == 0


async def test_a_slow_subscriber_goes_back_to_its_own_reader_and_holds_up_nobody(
    inner: InMemoryEventLog,
) -> None:
    shared = SharedTailLog(inner, queue_bytes=16 * 1024, idle_wait_s=0.01)
    try:
        await inner.send(recorded("seed", "T", range(1, 2)))
        fast = Reading(await shared.open(frozenset(), "end"))
        slow = Reading(await shared.open(frozenset(), "end"))
        await until(lambda: shared.members == 2)
        slow.running.clear()  # stops reading
        events = [e for n in range(20) for e in recorded(f"b{n}", "T", range(1, 11))]
        for start in range(0, len(events), 10):
            await inner.send(events[start : start + 10])
            await asyncio.sleep(0.002)
        expected = {f"b{n}": list(range(1, 11)) for n in range(20)}
        await fast.until(len(events))
        assert fast.versions() == expected
        assert shared.members == 1, "the slow one's queue filled: it left the tail"
        slow.running.set()
        await slow.until(len(events))
        await asyncio.sleep(0.05)
        assert slow.versions() == expected
        assert len(slow.records) == len(events)
        await until(lambda: shared.members == 2)  # caught up again on its own: back on the tail
        assert open_readers(inner) == 1
        await fast.stop()
        await slow.stop()
    finally:
        await shared.close()


async def test_the_tail_closes_once_unused_and_opens_again_when_needed(
    inner: InMemoryEventLog,
) -> None:
    shared = SharedTailLog(inner, idle_wait_s=0.01, linger_s=0.05)
    try:
        first = Reading(await shared.open(frozenset(), "end"))
        await until(lambda: shared.members == 1)
        await first.stop()
        await until(lambda: open_readers(inner) == 0)
        second = Reading(await shared.open(frozenset(), "end"))
        await until(lambda: shared.members == 1)
        await inner.send(recorded("c", "T", range(1, 3)))
        await second.until(2)
        assert [r.event.version for r in second.records] == [1, 2]
        await second.stop()
    finally:
        await shared.close()


async def test_a_keyed_reader_opened_before_its_topic_existed_joins_the_tail(
    inner: InMemoryEventLog, shared: SharedTailLog
) -> None:
    """Its key's partition may never hold a record: it learns the partition from its own
    reader's assignment, joins the tail and closes its own reader (in make test, keyed
    subscriptions opened just before their type's first record kept their consumers)."""
    key = "key-0"
    other = next(
        o
        for o in (f"other-{n}" for n in range(100))
        if inner.partition_of(o) != inner.partition_of(key)
    )
    keyed = Reading(await shared.open(frozenset({"T"}), "beginning", key=key))
    await asyncio.sleep(0.05)
    await inner.send(recorded(other, "T", range(1, 2)))  # creates the topic, not in key's partition
    await until(lambda: shared.members == 1)
    await until(lambda: open_readers(inner) == 1)  # the tail's only
    await inner.send(recorded(key, "T", range(1, 3)))
    await keyed.until(2)
    assert [r.event.version for r in keyed.records] == [1, 2]
    await keyed.stop()
