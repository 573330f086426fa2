"""Subscribe over the in-memory store and log: history, the caught-up marker, live events,
checkpoints to resume from, filters, repeated and late copies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from eventstore.domain.access import UNRESTRICTED
from eventstore.domain.errors import InvalidArgument
from eventstore.domain.events import Direction, RecordedEvent
from eventstore.domain.subscriptions import (
    AggregateCheckpoint,
    Checkpoint,
    LogCheckpoint,
    Start,
    StartAt,
    SubscriptionFilter,
    SubscriptionItem,
    decode_checkpoint,
)
from eventstore.ports import EventLog
from eventstore.publishing.shared_tail import SharedTailLog
from eventstore.storage.memory import InMemoryEventStorage
from eventstore.usecases.subscribe import RecentVersions, Subscribe
from tests.contract.publisher import recorded
from tests.contract.storage import new_events
from tests.fakes import InMemoryEventLog

NOW = datetime(2026, 1, 1, tzinfo=UTC)
BEGINNING, END = Start(StartAt.BEGINNING), Start(StartAt.END)

Items = AsyncGenerator[SubscriptionItem, None]


class World:
    def __init__(self, shared: bool) -> None:
        self.storage = InMemoryEventStorage()
        self.log = InMemoryEventLog()
        #: what subscriptions read: the log itself, or one tail of it shared by the live ones
        self.source: EventLog = SharedTailLog(self.log, idle_wait_s=0.01) if shared else self.log
        self.subscribe = Subscribe(self.storage, self.source, heartbeat_s=3600)

    async def close(self) -> None:
        if isinstance(self.source, SharedTailLog):
            await self.source.close()

    async def commit(
        self,
        aggregate: str,
        count: int,
        aggregate_type: str = "T",
        event_type: str = "Happened",
        publish: bool = True,
        at: datetime = NOW,
    ) -> list[RecordedEvent]:
        head = (await self.storage.stream_state(aggregate)).version
        await self.storage.append(
            aggregate, aggregate_type, head, new_events(count, event_type), at
        )
        events = await self.storage.read(aggregate, head + 1, Direction.FORWARDS, count)
        if publish:
            await self.log.send(events)
        return events

    def open(self, subscription: SubscriptionFilter, start: Start = BEGINNING) -> Items:
        return self.subscribe(subscription, start, UNRESTRICTED)


@pytest.fixture(params=[False, True], ids=["own readers", "shared tail"])
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    """Every guarantee holds whether subscriptions read the log each on their own or share
    its tail once live."""
    world = World(shared=request.param)
    yield world
    await world.close()


async def take(items: Items, count: int) -> list[SubscriptionItem]:
    return [await asyncio.wait_for(anext(items), 2) for _ in range(count)]


def shown(items: list[SubscriptionItem]) -> list[object]:
    """Events as (aggregate, version), the marker as "caught up"."""
    return [
        (i.event.aggregate_id, i.event.version) if i.event else "caught up"
        for i in items
        if not i.heartbeat
    ]


async def nothing_more(items: Items) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(items), 0.1)


# --- one aggregate ---------------------------------------------------------------------


async def test_history_then_caught_up_then_live_with_version_checkpoints(world: World) -> None:
    await world.commit("a", 3)
    await world.commit("b", 1)
    items = world.open(SubscriptionFilter(aggregate_id="a"))
    history = await take(items, 4)
    assert shown(history) == [("a", 1), ("a", 2), ("a", 3), "caught up"]
    assert [decode_checkpoint(i.checkpoint) for i in history] == [
        AggregateCheckpoint("a", v) for v in (1, 2, 3, 3)
    ]
    await world.commit("b", 1)
    await world.commit("a", 2)
    assert shown(await take(items, 2)) == [("a", 4), ("a", 5)]
    await nothing_more(items)
    await items.aclose()
    await world.close()
    assert all(reader.closed for reader in world.log.readers)


async def test_resume_from_a_checkpoint_and_from_the_end(world: World) -> None:
    await world.commit("a", 4)
    checkpoint = Start(StartAt.CHECKPOINT, AggregateCheckpoint("a", 2))
    resumed = world.open(SubscriptionFilter(aggregate_id="a"), checkpoint)
    assert shown(await take(resumed, 3)) == [("a", 3), ("a", 4), "caught up"]
    from_end = world.open(SubscriptionFilter(aggregate_id="a"), END)
    (marker,) = await take(from_end, 1)
    assert marker.caught_up
    assert decode_checkpoint(marker.checkpoint) == AggregateCheckpoint("a", 4)
    await world.commit("a", 1)
    assert shown(await take(from_end, 1)) == [("a", 5)]
    assert shown(await take(resumed, 1)) == [("a", 5)]


async def test_repeated_copies_are_skipped_and_a_late_gap_is_filled_from_the_store(
    world: World,
) -> None:
    first = await world.commit("a", 2)
    items = world.open(SubscriptionFilter(aggregate_id="a"))
    assert shown(await take(items, 3)) == [("a", 1), ("a", 2), "caught up"]
    await world.log.send(first)  # a repeated copy of what history delivered
    await world.commit("a", 2, publish=False)  # versions 3 and 4: not published yet
    await world.commit("a", 1)  # version 5 arrives first
    assert shown(await take(items, 3)) == [("a", 3), ("a", 4), ("a", 5)]
    await world.log.send(await world.storage.read("a", 3, Direction.FORWARDS, 2))  # late
    await nothing_more(items)


async def test_event_type_filter_still_moves_the_checkpoint(world: World) -> None:
    await world.commit("a", 1, event_type="Created")
    await world.commit("a", 2, event_type="Noise")
    items = world.open(SubscriptionFilter(aggregate_id="a", event_types=frozenset({"Created"})))
    created, marker = await take(items, 2)
    assert shown([created, marker]) == [("a", 1), "caught up"]
    assert decode_checkpoint(marker.checkpoint) == AggregateCheckpoint("a", 3)


async def test_an_aggregate_without_events_needs_its_one_type(world: World) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await anext(world.open(SubscriptionFilter(aggregate_id="new")))
    assert [v.field for v in refused.value.violations] == ["aggregate_types"]
    items = world.open(SubscriptionFilter(aggregate_id="new", aggregate_types=frozenset({"T"})))
    assert shown(await take(items, 1)) == ["caught up"]
    await world.commit("new", 1)
    assert shown(await take(items, 1)) == [("new", 1)]


async def test_checkpoints_of_another_subscription_are_refused(world: World) -> None:
    await world.commit("a", 1)
    wrong: list[tuple[SubscriptionFilter, Checkpoint]] = [
        (SubscriptionFilter(aggregate_id="a"), AggregateCheckpoint("b", 1)),
        (SubscriptionFilter(aggregate_id="a"), LogCheckpoint({})),
        (SubscriptionFilter(), AggregateCheckpoint("a", 1)),
    ]
    for subscription, checkpoint in wrong:
        with pytest.raises(InvalidArgument) as refused:
            await anext(world.open(subscription, Start(StartAt.CHECKPOINT, checkpoint)))
        assert [v.field for v in refused.value.violations] == ["checkpoint"]


# --- many aggregates -------------------------------------------------------------------


async def test_wide_filters_from_the_log_with_duplicates_dropped(world: World) -> None:
    a = await world.commit("a", 2, aggregate_type="Order")
    await world.commit("p", 1, aggregate_type="Payment")
    await world.log.send(a)  # published twice (the relay after a crash)
    orders = world.open(SubscriptionFilter(aggregate_types=frozenset({"Order"})))
    assert shown(await take(orders, 3)) == [("a", 1), ("a", 2), "caught up"]
    everything = world.open(SubscriptionFilter())
    history = shown(await take(everything, 4))
    assert history[-1] == "caught up"
    assert sorted(history[:-1]) == [("a", 1), ("a", 2), ("p", 1)]  # type: ignore[type-var]
    await world.commit("q", 1, aggregate_type="Refund")  # a type that appears later
    assert shown(await take(everything, 1)) == [("q", 1)]
    await nothing_more(orders)


async def test_a_log_checkpoint_resumes_exactly_after_what_was_delivered(world: World) -> None:
    await world.commit("a", 3)
    items = world.open(SubscriptionFilter())
    _, second = await take(items, 2)
    await items.aclose()
    checkpoint = decode_checkpoint(second.checkpoint)
    assert isinstance(checkpoint, LogCheckpoint)
    await world.commit("a", 1)
    resumed = world.open(SubscriptionFilter(), Start(StartAt.CHECKPOINT, checkpoint))
    assert shown(await take(resumed, 3)) == [("a", 3), ("a", 4), "caught up"]


async def test_from_the_end_only_later_events_and_a_heartbeat_when_idle(world: World) -> None:
    world.subscribe = Subscribe(world.storage, world.source, heartbeat_s=0.05)
    await world.commit("a", 2)
    items = world.open(SubscriptionFilter(event_types=frozenset({"Wanted"})), END)
    (marker,) = await take(items, 1)
    assert marker.caught_up
    await world.commit("a", 1, event_type="Noise")
    await world.commit("a", 1, event_type="Wanted")
    wanted, heartbeat = await take(items, 2)
    assert shown([wanted]) == [("a", 4)]
    assert heartbeat.heartbeat
    assert decode_checkpoint(heartbeat.checkpoint) == decode_checkpoint(wanted.checkpoint)


async def test_from_a_time_only_the_events_recorded_at_or_after_it(world: World) -> None:
    later = NOW + timedelta(minutes=1)
    await world.commit("a", 2)
    await world.commit("a", 2, at=later)
    early = await world.commit("b", 1, publish=False)
    await world.commit("c", 1, at=later)
    await world.log.send(early)  # recorded before the time, published after (the relay)
    start = Start(StartAt.TIME, time=later)
    one = world.open(SubscriptionFilter(aggregate_id="a"), start)
    assert shown(await take(one, 3)) == [("a", 3), ("a", 4), "caught up"]
    wide = world.open(SubscriptionFilter(), start)
    history = shown(await take(wide, 4))
    assert history[-1] == "caught up"
    assert sorted(history[:-1]) == [("a", 3), ("a", 4), ("c", 1)]  # type: ignore[type-var]
    await world.commit("a", 1)  # live, yet recorded before the time (a clock behind)
    await world.commit("b", 1, at=later)
    assert shown(await take(wide, 1)) == [("b", 2)]
    await nothing_more(wide)
    await nothing_more(one)


async def test_dedupe_memory_is_bounded_and_forgets_the_least_recent_aggregates() -> None:
    # A wide subscription once kept a million aggregates' versions (about 378 MiB with long
    # ids): the memory is a byte budget now, spent on the most recently seen aggregates.
    budget = 64 * 1024
    recent = RecentVersions(budget)
    events = [
        event
        for n in range(5_000)
        for event in recorded(f"aggregate-{n:05}-{'x' * 200}", "T", range(1, 2))
    ]
    assert not any(recent.is_repeat(e) for e in events)
    assert recent.used_bytes <= budget
    assert 0 < len(recent) < 5_000
    assert recent.is_repeat(events[-1]), "a recent aggregate's copy is dropped"
    assert not recent.is_repeat(events[0]), "a forgotten one's copy is delivered again"


async def test_a_wide_subscription_with_a_small_budget_still_drops_recent_repeats(
    world: World,
) -> None:
    world.subscribe = Subscribe(world.storage, world.source, heartbeat_s=3600, dedupe_bytes=1)
    a = await world.commit("a", 2)
    await world.log.send(a[-1:])  # a repeated copy right behind the original
    items = world.open(SubscriptionFilter())
    assert shown(await take(items, 3)) == [("a", 1), ("a", 2), "caught up"]
    await nothing_more(items)
