"""Invariant 8: subscriptions are gap-free and repeat nothing per aggregate, resume from their
checkpoint (also across a server restart), and a slow one holds back nobody."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable

import pytest

from eventstore.client import (
    Event,
    EventStoreClient,
    InvalidArgumentError,
    SubscriptionMessage,
)
from eventstore.config import KafkaSettings, ServerSettings
from eventstore.domain.events import RecordedEvent
from eventstore.server import RunningServer, start
from tests.support import decode, read_topic, unique

pytestmark = pytest.mark.integration


class Collector:
    """Reads a subscription in the background and keeps what arrived."""

    def __init__(self, stream: AsyncIterator[SubscriptionMessage], delay_s: float = 0.0) -> None:
        self.events: list[RecordedEvent] = []
        self.messages: list[SubscriptionMessage] = []
        self.caught_up_at: list[int] = []
        self.arrival: dict[str, float] = {}
        self._delay = delay_s
        self._task = asyncio.create_task(self._run(stream))

    async def _run(self, stream: AsyncIterator[SubscriptionMessage]) -> None:
        async for message in stream:
            self.messages.append(message)
            if message.event is not None:
                self.events.append(message.event)
                self.arrival[str(message.event.event_id)] = time.monotonic()
            if message.caught_up:
                self.caught_up_at.append(len(self.events))
            if self._delay:
                await asyncio.sleep(self._delay)

    async def wait_for(self, predicate: Callable[[Collector], bool], within: float = 60) -> None:
        deadline = time.monotonic() + within
        while not predicate(self):
            if self._task.done():
                self._task.result()  # raise what ended it
                raise AssertionError("subscription ended early")
            assert time.monotonic() < deadline, f"timed out with {len(self.events)} events"
            await asyncio.sleep(0.05)

    async def settle(self) -> None:
        """Give stragglers (duplicates, extras) a chance to show up."""
        await asyncio.sleep(1.5)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def events_at_least(count: int) -> Callable[[Collector], bool]:
    return lambda collector: len(collector.events) >= count


def arrived(event_id: str) -> Callable[[Collector], bool]:
    return lambda collector: event_id in collector.arrival


def assert_exactly(received: list[RecordedEvent], expected: list[RecordedEvent]) -> None:
    keys = [(e.aggregate_id, e.version) for e in received]
    assert len(keys) == len(set(keys)), "an event was delivered twice"
    assert sorted(keys) == sorted((e.aggregate_id, e.version) for e in expected)
    by_aggregate: dict[str, list[int]] = defaultdict(list)
    for event in received:
        by_aggregate[event.aggregate_id].append(event.version)
    for versions in by_aggregate.values():
        assert versions == sorted(versions), "versions out of order"
    want = {(e.aggregate_id, e.version): e.event_id for e in expected}
    assert all(want[(e.aggregate_id, e.version)] == e.event_id for e in received)


async def test_three_filters_during_concurrent_writes(client: EventStoreClient) -> None:
    account = "acct-0"
    subscribers = {
        "one aggregate": Collector(
            client.subscribe(aggregate_id=account, aggregate_types=["Account"])
        ),
        "aggregate type": Collector(client.subscribe(aggregate_types=["Order"])),
        "event type": Collector(client.subscribe(event_types=["Paid"])),
        "everything": Collector(client.subscribe()),
    }
    rng = random.Random(7)
    aggregates = {f"order-{i}": "Order" for i in range(4)} | {
        f"acct-{i}": "Account" for i in range(3)
    }

    async def writer(w: int) -> None:
        for _ in range(15):
            aggregate = rng.choice(sorted(aggregates))
            events = [
                Event(rng.choice(["Placed", "Paid", "Shipped"]), {"w": w})
                for _ in range(rng.randint(1, 3))
            ]
            await client.append(aggregate, aggregates[aggregate], events)

    await asyncio.gather(*(writer(w) for w in range(8)))
    stored = [e for aggregate in aggregates for e in await client.read_all(aggregate)]
    expected = {
        "one aggregate": [e for e in stored if e.aggregate_id == account],
        "aggregate type": [e for e in stored if e.aggregate_type == "Order"],
        "event type": [e for e in stored if e.event_type == "Paid"],
        "everything": stored,
    }
    for name, collector in subscribers.items():
        want = len(expected[name])
        await collector.wait_for(events_at_least(want))
    for collector in subscribers.values():
        await collector.settle()
    for name, collector in subscribers.items():
        assert_exactly(collector.events, expected[name])
        assert len(collector.caught_up_at) == 1, name
        await collector.stop()


async def test_resume_from_checkpoint_across_a_server_restart(
    server_settings: ServerSettings,
) -> None:
    first = await start(server_settings)
    try:
        async with EventStoreClient(f"127.0.0.1:{first.port}") as client:
            for i in range(10):
                await client.append(f"cart-{i % 3}", "Cart", [Event("ItemAdded", {"i": i})])
            wide = Collector(client.subscribe())
            await wide.wait_for(lambda c: len(c.events) >= 6)
            await wide.stop()
            wide_checkpoint = next(m.checkpoint for m in wide.messages if m.event is wide.events[5])
            seen_wide = wide.events[:6]
            one = Collector(client.subscribe(aggregate_id="cart-0"))
            await one.wait_for(lambda c: len(c.events) >= 2)
            await one.stop()
            one_checkpoint = next(m.checkpoint for m in one.messages if m.event is one.events[1])
            seen_one = one.events[:2]
            # This test is about resuming; recovering publications a stopped server left
            # unconfirmed is covered by test_publication/test_operations. Stop only once Kafka
            # has all ten.
            topic = server_settings.kafka.topic("Cart")
            published = await asyncio.to_thread(
                read_topic, server_settings.kafka.bootstrap, topic, 10
            )
            assert len({decode(r).event_id for r in published}) == 10
    finally:
        await first.stop(grace=2)

    second = await start(server_settings)
    try:
        async with EventStoreClient(f"127.0.0.1:{second.port}") as client:
            for i in range(10, 15):
                await client.append(f"cart-{i % 3}", "Cart", [Event("ItemAdded", {"i": i})])
            stored = [e for a in ("cart-0", "cart-1", "cart-2") for e in await client.read_all(a)]
            rest = [
                e
                for e in stored
                if (e.aggregate_id, e.version)
                not in {(s.aggregate_id, s.version) for s in seen_wide}
            ]
            resumed = Collector(client.subscribe(start=wide_checkpoint))
            try:
                await resumed.wait_for(lambda c: len(c.events) >= len(rest))
            except AssertionError:
                got = {(e.aggregate_id, e.version) for e in resumed.events}
                missing = sorted(
                    (e.aggregate_id, e.version)
                    for e in rest
                    if (e.aggregate_id, e.version) not in got
                )
                seen = sorted((e.aggregate_id, e.version) for e in seen_wide)
                # A rare failure under full-suite load was seen once and not reproduced:
                # say exactly what was missing, to find out why.
                raise AssertionError(f"missing {missing}; got {sorted(got)}; seen {seen}") from None
            await resumed.settle()
            assert_exactly(resumed.events, rest)
            await resumed.stop()

            rest_one = [
                e for e in stored if e.aggregate_id == "cart-0" and e.version > seen_one[-1].version
            ]
            resumed_one = Collector(client.subscribe(aggregate_id="cart-0", start=one_checkpoint))
            await resumed_one.wait_for(
                lambda c: len(c.events) >= len(rest_one) and bool(c.caught_up_at)
            )
            await resumed_one.settle()
            assert_exactly(resumed_one.events, rest_one)
            await resumed_one.stop()
    finally:
        await second.stop(grace=2)


async def test_slow_subscriber_delays_neither_appends_nor_others(client: EventStoreClient) -> None:
    big = {"blob": "x" * 20_000}
    for i in range(150):  # enough history to fill a stalled stream's buffers
        await client.append(f"bulk-{i % 10}", "Bulk", [Event("Loaded", big)])
    stalled = Collector(client.subscribe(), delay_s=3600)  # reads one message, then stops reading
    await stalled.wait_for(lambda c: len(c.messages) >= 1)
    fast = Collector(client.subscribe(start="end"))
    await fast.wait_for(lambda c: bool(c.caught_up_at))
    append_latency = []
    delivery_latency = []
    for i in range(40):
        event = Event("Live", {"i": i})
        started = time.monotonic()
        await client.append(f"live-{i % 4}", "Bulk", [event])
        append_latency.append(time.monotonic() - started)
        await fast.wait_for(arrived(str(event.event_id)), within=10)
        delivery_latency.append(fast.arrival[str(event.event_id)] - started)
    assert len(stalled.events) <= 1
    assert statistics.median(append_latency) < 0.2
    assert max(delivery_latency) < 5, delivery_latency
    await stalled.stop()
    await fast.stop()


async def test_bad_subscriptions_are_refused(
    server: RunningServer, client: EventStoreClient
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        async for _ in client.subscribe(start="not-a-checkpoint"):
            pass
    assert caught.value.fields == ["checkpoint"]
    with pytest.raises(InvalidArgumentError) as caught:
        async for _ in client.subscribe(aggregate_id=unique("nobody")):
            pass
    assert caught.value.fields == ["aggregate_types"]
    with pytest.raises(InvalidArgumentError) as caught:
        async for _ in client.subscribe(event_types=["bad type"]):
            pass
    assert caught.value.fields == ["event_types[0]"]


async def test_from_a_time_exactly_the_events_recorded_at_or_after_it(
    client: EventStoreClient, kafka_settings: KafkaSettings
) -> None:
    kind = unique("Timed").replace("-", "")
    aggregates = [unique("timed") for _ in range(6)]

    async def round_of(event_type: str) -> None:
        await asyncio.gather(
            *(
                client.append(a, kind, [Event(event_type, {}), Event(event_type, {})])
                for a in aggregates
            )
        )

    await round_of("Before")
    await asyncio.sleep(0.01)  # recorded_at is in milliseconds: the rounds do not share one
    await round_of("After")
    stored = [e for a in aggregates for e in await client.read_all(a)]
    since = min(e.recorded_at for e in stored if e.event_type == "After")
    assert any(e.recorded_at < since for e in stored)
    # A type subscription's history is what Kafka holds: an append is acknowledged before it
    # is published, so without this wait some of the round could come after caught-up (as live
    # events, in order, nothing lost: what the marker's position below would fail on).
    records = await asyncio.to_thread(
        read_topic, kafka_settings.bootstrap, kafka_settings.topic(kind), len(stored)
    )
    assert len(records) == len(stored)
    wide = Collector(client.subscribe(aggregate_types=[kind], start=since))
    one = Collector(client.subscribe(aggregate_id=aggregates[0], start=since))
    history = [e for e in stored if e.recorded_at >= since]
    await wide.wait_for(lambda c: bool(c.caught_up_at))
    await one.wait_for(lambda c: bool(c.caught_up_at))
    await round_of("Live")
    stored = [e for a in aggregates for e in await client.read_all(a)]
    expected = [e for e in stored if e.recorded_at >= since]
    await wide.wait_for(events_at_least(len(expected)))
    await one.wait_for(
        events_at_least(len([e for e in expected if e.aggregate_id == aggregates[0]]))
    )
    await wide.settle()
    assert_exactly(wide.events, expected)
    assert_exactly(one.events, [e for e in expected if e.aggregate_id == aggregates[0]])
    # History (the "After" round) came before the caught-up marker, live events after it.
    assert wide.caught_up_at == [len(history)]
    assert one.caught_up_at == [len([e for e in history if e.aggregate_id == aggregates[0]])]
    await wide.stop()
    await one.stop()


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


async def test_live_subscriptions_share_one_consumer(client: EventStoreClient) -> None:
    """Each subscription was its own Kafka consumer (about four librdkafka threads and as many
    sockets each, however idle): live ones now share one tail of the log."""
    await client.append("shared-0", "Shared", [Event("Made", {})])
    before = threads()
    streams = [
        Collector(client.subscribe(aggregate_types=["Shared"], start="end")) for _ in range(10)
    ] + [
        Collector(client.subscribe(aggregate_id=f"shared-{n}", aggregate_types=["Shared"]))
        for n in range(10)
    ]
    for stream in streams:
        await stream.wait_for(lambda c: bool(c.caught_up_at))
    deadline = time.monotonic() + 30
    while threads() - before > 12:  # the tail's consumer, gRPC's own; not 20 consumers'
        assert time.monotonic() < deadline, f"{threads() - before} more threads"
        await asyncio.sleep(0.2)
    event = Event("Made", {"n": 1})
    await client.append("shared-1", "Shared", [event])
    for n, stream in enumerate(streams):
        if n < 10 or n == 11:
            await stream.wait_for(arrived(str(event.event_id)), within=10)
    await asyncio.sleep(0.5)
    # From the end: the first event too, if the relay published it after the stream opened.
    assert all([e.event_id for e in s.events][-1:] == [event.event_id] for s in streams[:10])
    assert all(len(s.events) <= 2 for s in streams[:10])
    assert [len(s.events) for s in streams[10:]] == [1, 1] + [0] * 8
    for stream in streams:
        await stream.stop()


async def test_hand_over_to_the_shared_tail_during_appends(client: EventStoreClient) -> None:
    """Subscriptions that start with history read it on their own consumer and join the
    shared tail while appends go on: nothing missed, nothing twice, versions in order."""
    for i in range(60):
        await client.append(f"hand-{i % 6}", "Hand", [Event("Before", {"i": i})])
    writing = asyncio.Event()

    async def writer(w: int) -> None:
        for i in range(25):
            await client.append(f"hand-{(w + i) % 6}", "Hand", [Event("During", {"i": i})])
            writing.set()
            await asyncio.sleep(0.01)

    writers = asyncio.gather(*(writer(w) for w in range(4)))
    await writing.wait()
    wide = Collector(client.subscribe(aggregate_types=["Hand"]))
    one = Collector(client.subscribe(aggregate_id="hand-2"))
    await writers
    stored = [e for n in range(6) for e in await client.read_all(f"hand-{n}")]
    await wide.wait_for(events_at_least(len(stored)))
    await one.wait_for(events_at_least(sum(e.aggregate_id == "hand-2" for e in stored)))
    await wide.settle()
    assert_exactly(wide.events, stored)
    assert_exactly(one.events, [e for e in stored if e.aggregate_id == "hand-2"])
    await wide.stop()
    await one.stop()
