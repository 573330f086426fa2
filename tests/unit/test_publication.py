"""The publication use case over fakes: order per aggregate, the journal's group commit and
settlement, isolation of failing aggregates, and taking over a silent writer."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from eventstore.domain.access import UNRESTRICTED
from eventstore.domain.errors import StorageUnavailable, WrongExpectedVersion
from eventstore.domain.events import AppendRequest, Direction, ExpectedVersion, NewEvent
from eventstore.ports import AppendOutcome, ParkedAggregate, StreamState
from eventstore.storage.memory import (
    InMemoryAggregateCatalog,
    InMemoryEventStorage,
    InMemoryPublicationLog,
)
from eventstore.usecases.append import AppendEvents
from eventstore.usecases.journal import WriterJournal
from eventstore.usecases.publish import Publication
from tests.fakes import RecordingPublisher

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class World:
    """One store, one Kafka, one journal store, and any number of server processes."""

    def __init__(self) -> None:
        self.storage = InMemoryEventStorage()
        self.outbox = InMemoryPublicationLog()
        self.catalog = InMemoryAggregateCatalog()
        self.publisher = RecordingPublisher()

    def process(self, takeover_after_s: float = 10.0) -> tuple[Publication, AppendEvents]:
        publication = Publication(
            self.storage,
            self.outbox,
            self.publisher,
            WriterJournal(self.outbox, self.catalog),
            interval_s=0.01,
            takeover_after_s=takeover_after_s,
        )
        return publication, AppendEvents(
            self.storage, publication=publication, catalog=self.catalog
        )

    def first_copies(self, aggregate: str) -> list[int]:
        seen: list[int] = []
        for event in self.publisher.records:
            if event.aggregate_id == aggregate and event.version not in seen:
                seen.append(event.version)
        return seen


def request(aggregate: str, count: int = 1, expected: int | None = None) -> AppendRequest:
    events = tuple(NewEvent(uuid.uuid4(), "E", b"{}", "application/json") for _ in range(count))
    version = ExpectedVersion.any() if expected is None else ExpectedVersion.exact(expected)
    return AppendRequest(aggregate, "T", version, events)


async def settle(publication: Publication) -> None:
    """Let background publications finish and run relay rounds until nothing is pending."""
    for _ in range(50):
        await publication.drain()
        await publication.relay_once()
        await asyncio.sleep(0)
        await publication.drain()
        if not publication.journal.open_entries and not publication._replays:
            return
    raise AssertionError("publication did not settle")


async def test_appends_are_published_and_their_journal_entries_settled() -> None:
    world = World()
    publication, append = world.process()
    await publication.start()
    for _ in range(3):
        await append(request("a", 2), UNRESTRICTED)
    await settle(publication)
    assert world.first_copies("a") == [1, 2, 3, 4, 5, 6]
    assert publication.journal.settled_through == publication.journal.writes
    assert await world.outbox.published_through("a") == 6


async def test_concurrent_appends_share_journal_writes() -> None:
    world = World()
    publication, append = world.process()
    await publication.start()
    await asyncio.gather(*(append(request(f"agg-{n}"), UNRESTRICTED) for n in range(50)))
    await settle(publication)
    journal = publication.journal
    assert journal.announced == 50
    assert journal.writes < 10, "announcements made while a write is in flight share the next"
    assert all(world.first_copies(f"agg-{n}") == [1] for n in range(50))


async def test_later_append_published_first_still_comes_out_in_order() -> None:
    world = World()
    publication, _ = world.process()
    await world.storage.append("a", "T", 0, request("a", 2).events, NOW)
    await world.storage.append("a", "T", 2, request("a", 2).events, NOW)
    later = await world.storage.read("a", 3, Direction.FORWARDS, 10)
    earlier = await world.storage.read("a", 1, Direction.FORWARDS, 2)
    publication.committed(later)  # the second append's task runs first
    publication.committed(earlier)
    await publication.stop(grace_s=5)
    assert world.first_copies("a") == [1, 2, 3, 4]
    assert await world.outbox.published_through("a") == 4


async def test_gap_left_by_another_process_is_filled_from_storage() -> None:
    world = World()
    publication, _ = world.process()
    await world.storage.append("a", "T", 0, request("a", 3).events, NOW)  # not published
    await world.storage.append("a", "T", 3, request("a", 1).events, NOW)
    publication.committed(await world.storage.read("a", 4, Direction.FORWARDS, 10))
    await publication.stop(grace_s=5)
    assert world.first_copies("a") == [1, 2, 3, 4]


class ShufflingStorage(InMemoryEventStorage):
    """Answers appends after a random pause, so commits finish out of their version order."""

    async def append(
        self,
        aggregate_id: str,
        aggregate_type: str,
        expected_version: int,
        events: Sequence[NewEvent],
        recorded_at: datetime,
    ) -> AppendOutcome:
        outcome = await super().append(
            aggregate_id, aggregate_type, expected_version, events, recorded_at
        )
        await asyncio.sleep(random.uniform(0, 0.05))
        return outcome


async def test_racing_appends_through_two_processes_are_published_in_version_order() -> None:
    world = World()
    world.storage = ShufflingStorage()
    first, append_first = world.process()
    second, append_second = world.process()
    for publication in (first, second):
        await publication.start()
    world.publisher.delay_s = 0.001
    await asyncio.gather(
        *(
            append(request("a", 2), UNRESTRICTED)
            for _ in range(20)
            for append in (append_first, append_second)
        )
    )
    for publication in (first, second):
        await settle(publication)
    assert world.first_copies("a") == list(range(1, 81))


async def test_refused_appends_leave_no_open_entry() -> None:
    world = World()
    publication, append = world.process()
    await publication.start()
    await append(request("a"), UNRESTRICTED)
    for absurd in (10**6, 2**62, 5):
        with pytest.raises(WrongExpectedVersion):
            await append(request("a", expected=absurd), UNRESTRICTED)
    same = request("a")
    await append(same, UNRESTRICTED)
    assert (await append(same, UNRESTRICTED)).already_committed  # a retry answered from storage
    await settle(publication)
    assert publication.journal.open_entries == 0
    assert publication.journal.settled_through == publication.journal.writes
    assert world.first_copies("a") == [1, 2]


async def test_a_failed_delivery_is_caught_up_by_the_relay() -> None:
    world = World()
    publication, append = world.process()
    await publication.start()
    world.publisher.fail_next = 1
    await append(request("a", 3), UNRESTRICTED)
    await publication.drain()
    assert world.first_copies("a") == []
    assert publication.journal.orphans(), "the entry is left for the relay"
    await settle(publication)
    assert world.first_copies("a") == [1, 2, 3]
    assert publication.journal.open_entries == 0


async def test_an_aggregate_that_cannot_be_published_is_parked_and_blocks_no_other() -> None:
    world = World()
    publication, append = world.process()
    await publication.start()
    world.publisher.refused.add("broken")
    await append(request("broken"), UNRESTRICTED)
    await append(request("zzz-fine"), UNRESTRICTED)
    await append(request("aaa-fine"), UNRESTRICTED)
    await settle(publication)
    assert world.first_copies("zzz-fine") == [1]
    assert world.first_copies("aaa-fine") == [1]
    parked = await world.outbox.parked()
    assert [p.aggregate_id for p in parked] == ["broken"]
    assert "injected refusal" in parked[0].reason
    assert publication.journal.open_entries == 0, "parked: no longer this writer's to hold"
    # Once the cause is gone, the retry (with its own backoff) publishes it.
    world.publisher.refused.clear()
    parked_at = parked[0].next_attempt_at
    publication._clock = lambda: parked_at + timedelta(seconds=1)
    await publication.relay_once()
    await settle(publication)
    assert world.first_copies("broken") == [1]
    assert await world.outbox.parked() == []


async def test_kafka_down_as_a_whole_parks_nothing_and_publishes_after() -> None:
    world = World()
    publication, append = world.process()
    await publication.start()
    world.publisher.unavailable = True
    for n in range(5):
        await append(request(f"agg-{n}"), UNRESTRICTED)
    for _ in range(3):
        await publication.relay_once()
        await publication.drain()
    assert await world.outbox.parked() == []
    assert publication.journal.open_entries == 5
    world.publisher.unavailable = False
    await settle(publication)
    assert all(world.first_copies(f"agg-{n}") == [1] for n in range(5))


async def test_a_silent_writers_journal_is_taken_over() -> None:
    world = World()
    dead, dead_append = world.process()
    await dead.start()
    world.publisher.unavailable = True  # it commits, then dies before publishing anything
    await dead_append(request("a", 2), UNRESTRICTED)
    await dead_append(request("b"), UNRESTRICTED)
    await dead.drain()
    world.publisher.unavailable = False
    assert world.publisher.records == []
    alive, _ = world.process(takeover_after_s=0.05)
    await alive.start()
    await asyncio.sleep(0.1)  # the dead writer's heartbeat is now older than the takeover age
    await alive.journal.beat()
    await settle(alive)
    assert world.first_copies("a") == [1, 2]
    assert world.first_copies("b") == [1]
    state = {w.writer: w for w in await world.outbox.writers()}[dead.journal.writer]
    assert state.resolved == dead.journal.writes, "settled for the others to see"


async def test_an_abandoned_announcement_does_not_keep_its_entry_open() -> None:
    world = World()
    publication, _ = world.process()
    announcing = asyncio.create_task(publication.announce("a"))
    await asyncio.sleep(0)
    announcing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await announcing
    await asyncio.sleep(0.01)
    assert publication.journal.open_entries == 0


async def test_new_aggregates_are_cataloged_before_they_commit() -> None:
    world = World()
    _, append = world.process()
    await append(request("a"), UNRESTRICTED)
    await append(request("a"), UNRESTRICTED)
    assert await world.catalog.aggregates("T", datetime.now(UTC).date()) == ["a"]


async def test_a_drained_silent_writer_is_retired_after_an_hour() -> None:
    world = World()
    dead, dead_append = world.process()
    await dead.start()
    await dead_append(request("a"), UNRESTRICTED)
    await dead.drain()
    alive, _ = world.process(takeover_after_s=0.05)
    await alive.start()
    await asyncio.sleep(0.1)
    await settle(alive)
    assert dead.journal.writer in {w.writer for w in await world.outbox.writers()}
    later = datetime.now(UTC) + timedelta(hours=2)
    alive._clock = lambda: later
    await settle(alive)
    assert {w.writer for w in await world.outbox.writers()} == {alive.journal.writer}
    assert dead.journal.writer not in world.outbox.journal


async def test_a_clean_stop_retires_the_writer_when_everything_is_settled() -> None:
    world = World()
    publication, append = world.process()
    await publication.start()
    await append(request("a"), UNRESTRICTED)
    await publication.stop(grace_s=5)
    assert await world.outbox.writers() == []
    assert world.first_copies("a") == [1]


async def test_a_stop_with_unpublished_appends_leaves_them_to_the_others() -> None:
    world = World()
    publication, append = world.process()
    await publication.start()
    world.publisher.unavailable = True
    await append(request("a"), UNRESTRICTED)
    await publication.stop(grace_s=0.1)
    (writer,) = await world.outbox.writers()
    assert writer.writer == publication.journal.writer
    assert writer.resolved < publication.journal.writes


class FlakyHeartbeats(InMemoryPublicationLog):
    """A journal store whose first `failures` heartbeats time out (a replica restarting)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def heartbeat(self, writer: uuid.UUID, resolved: int, at: datetime) -> None:
        if self.failures:
            self.failures -= 1
            raise StorageUnavailable("Cassandra: WriteTimeout")
        await super().heartbeat(writer, resolved, at)


async def test_a_writer_registration_that_times_out_is_asked_again() -> None:
    """Seen in the fault tests: a replica started while a Cassandra node came back crashed on
    one WriteTimeout of its first heartbeat instead of waiting for the node."""
    world = World()
    world.outbox = FlakyHeartbeats(failures=1)
    publication, _ = world.process()
    await publication.start(within_s=10)
    assert publication.journal.writer in world.outbox.heartbeats


async def test_a_writer_that_cannot_register_in_time_gives_up() -> None:
    world = World()
    world.outbox = FlakyHeartbeats(failures=100)
    publication, _ = world.process()
    with pytest.raises(StorageUnavailable):
        await publication.start(within_s=0.2)


class FlakyParked(InMemoryPublicationLog):
    """A journal store whose reads of the parked entries time out `failures` times."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def parked(self) -> list[ParkedAggregate]:
        if self.failures:
            self.failures -= 1
            raise StorageUnavailable("Cassandra: OperationTimedOut")
        return await super().parked()


async def test_a_relay_step_that_fails_is_logged_and_retried_next_round() -> None:
    """Not left as an exception in its task ("Task exception was never retrieved")."""
    world = World()
    world.outbox = FlakyParked(failures=1)
    publication, append = world.process()
    await publication.start()
    world.publisher.refused.add("broken")
    await append(request("broken"), UNRESTRICTED)
    await settle(publication)
    [parked] = await world.outbox.parked()
    world.publisher.refused.clear()
    publication._clock = lambda: parked.next_attempt_at + timedelta(seconds=1)
    world.outbox.failures = 1
    await publication.relay_once()
    steps = list(publication._replays.values())
    assert steps, "the parked entries' retry runs in the background"
    await asyncio.gather(*steps)  # raises if the failure was left in the task
    assert all(step.exception() is None for step in steps)
    await publication.relay_once()
    await settle(publication)
    assert world.first_copies("broken") == [1]
    assert await world.outbox.parked() == []


class UnsettledAppends(InMemoryEventStorage):
    """Appends to `unsure-…` aggregates after their first commit but answer as a CAS write
    timeout would, and a plain read of the head misses them (a quorum accepted the proposal,
    none committed it yet); only `settled_state` (Cassandra: a SERIAL read) sees them."""

    async def append(
        self,
        aggregate_id: str,
        aggregate_type: str,
        expected_version: int,
        events: Sequence[NewEvent],
        recorded_at: datetime,
    ) -> AppendOutcome:
        outcome = await super().append(
            aggregate_id, aggregate_type, expected_version, events, recorded_at
        )
        if aggregate_id.startswith("unsure") and expected_version > 0:
            raise StorageUnavailable("Cassandra: append outcome unknown; retry it")
        return outcome

    async def stream_state(self, aggregate_id: str) -> StreamState:
        state = await super().stream_state(aggregate_id)
        if aggregate_id.startswith("unsure") and state.version > 1:
            return StreamState(state.version - 1, state.aggregate_type)
        return state

    async def settled_state(self, aggregate_id: str) -> StreamState:
        return await super().stream_state(aggregate_id)


async def test_an_unknown_outcome_is_caught_up_from_the_settled_head_not_a_plain_read() -> None:
    """Seen in the Cassandra node-kill fault test: an append timed out, the relay read the
    head before the proposal was committed, found nothing to publish and settled its entry;
    the client's retry then committed it (`already_committed`), and that last version of the
    aggregate never reached Kafka."""
    world = World()
    world.storage = UnsettledAppends()
    publication, append = world.process()
    await publication.start()
    await append(request("unsure-1"), UNRESTRICTED)  # version 1, answered
    with pytest.raises(StorageUnavailable):  # version 2, committed, its outcome unknown
        await append(request("unsure-1"), UNRESTRICTED)
    await settle(publication)
    assert world.first_copies("unsure-1") == [1, 2]
    assert publication.journal.open_entries == 0
