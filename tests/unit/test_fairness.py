"""Max-min fair shares of storage calls among principals (eventstore.usecases.fairness)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import grpc
import pytest

from eventstore.access_cli import new_key
from eventstore.config import LimitSettings, ServerSettings
from eventstore.domain.access import hash_key
from eventstore.domain.events import AggregateInfo, Direction, NewEvent, RecordedEvent
from eventstore.server import Components, start
from eventstore.storage.memory import InMemoryEventStorage
from eventstore.usecases.fairness import FairShare, FairStorage, serving
from eventstore.v1 import eventstore_pb2 as pb
from eventstore.v1 import eventstore_pb2_grpc as pb_grpc


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_free_slots_are_taken_without_waiting() -> None:
    share = FairShare(2)
    await share.acquire("a")
    await share.acquire("b")
    assert share.in_use == 2
    share.release("a")
    share.release("b")
    assert share.in_use == 0


async def test_a_freed_slot_goes_to_the_principal_holding_fewest_not_the_first_queued() -> None:
    share = FairShare(2)
    await share.acquire("noisy")
    await share.acquire("noisy")
    granted: list[str] = []

    async def call(who: str) -> None:
        await share.acquire(who)
        granted.append(who)

    # The noisy principal queues ten more before the quiet one asks.
    noisy = [asyncio.create_task(call("noisy")) for _ in range(10)]
    await settle()
    quiet = asyncio.create_task(call("quiet"))
    await settle()
    assert granted == []
    assert share.waiting() == 11
    share.release("noisy")
    await settle()
    assert granted == ["quiet"]
    # Each holds one now: the next freed slot is the noisy one's turn again.
    share.release("noisy")
    await settle()
    assert granted == ["quiet", "noisy"]
    share.release("quiet")
    share.release("noisy")
    await settle()
    for task in noisy:
        task.cancel()
    await asyncio.gather(*noisy, quiet, return_exceptions=True)


async def test_among_equals_the_oldest_call_goes_first() -> None:
    share = FairShare(1)
    await share.acquire("x")
    granted: list[str] = []

    async def call(who: str) -> None:
        await share.acquire(who)
        granted.append(who)
        share.release(who)

    tasks = []
    for who in ("b", "a", "c"):
        tasks.append(asyncio.create_task(call(who)))
        await settle()
    share.release("x")
    await asyncio.gather(*tasks)
    assert granted == ["b", "a", "c"]
    assert share.in_use == 0
    assert share.waiting() == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_a_granted_one_hands_its_slot_on() -> None:
    share = FairShare(1)
    await share.acquire("a")
    waiting = asyncio.create_task(share.acquire("b"))
    await settle()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert share.waiting() == 0
    # Granted and cancelled in the same step: the slot is not lost.
    granted_then_cancelled = asyncio.create_task(share.acquire("c"))
    await settle()
    share.release("a")  # grants c's future ...
    granted_then_cancelled.cancel()  # ... before c runs again
    with pytest.raises(asyncio.CancelledError):
        await granted_then_cancelled
    assert share.in_use == 0
    await asyncio.wait_for(share.acquire("d"), 1)


async def test_storage_calls_for_a_caller_take_a_slot_and_the_servers_own_do_not() -> None:
    share = FairShare(1)
    storage = FairStorage(InMemoryEventStorage(), share)
    now = datetime.now(UTC)
    await share.acquire("someone")  # every slot taken
    # The server's own work (no caller) is not queued behind callers.
    outcome = await asyncio.wait_for(
        storage.append(
            "a-1", "Order", 0, [NewEvent(uuid4(), "Placed", b"{}", "application/json")], now
        ),
        1,
    )
    assert outcome is not None

    async def for_caller() -> int:
        serving.set("quiet")
        return len(await storage.read("a-1", 1, Direction.FORWARDS, 10))

    read = asyncio.create_task(for_caller())
    await settle()
    assert not read.done()
    assert share.waiting() == 1
    share.release("someone")
    assert await asyncio.wait_for(read, 1) == 1
    assert share.in_use == 0


class OrderedStorage(InMemoryEventStorage):
    """Records which aggregates' calls reached the backend, in order; calls on `held…`
    aggregates wait for `gate` once there."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.reached: list[str] = []

    async def describe(self, aggregate_id: str) -> AggregateInfo | None:
        self.reached.append(aggregate_id)
        if aggregate_id.startswith("held"):
            await self.gate.wait()
        return await super().describe(aggregate_id)


async def test_through_grpc_a_quiet_principal_is_served_before_a_noisy_ones_backlog(
    tmp_path: Path,
) -> None:
    noisy_key, quiet_key = new_key(), new_key()
    permissions = tmp_path / "permissions.yaml"
    permissions.write_text(
        "principals:\n"
        f"  noisy:\n    keys: ['{hash_key(noisy_key)}']\n    read: [T]\n"
        f"  quiet:\n    keys: ['{hash_key(quiet_key)}']\n    read: [T]\n"
    )
    settings = ServerSettings(
        listen="127.0.0.1:0",
        auth_disabled=False,
        permissions_file=permissions,
        limits=LimitSettings(storage_calls_in_flight=2),
    )
    storage = OrderedStorage()
    running = await start(settings, Components(storage))
    assert running.share is not None
    share = running.share
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.EventStoreStub(channel)

            def get(aggregate_id: str, key: str) -> Any:
                return stub.GetAggregate(
                    pb.GetAggregateRequest(aggregate_id=aggregate_id),
                    metadata=[("authorization", f"Bearer {key}")],
                    timeout=10,
                )

            noisy = [get(f"held-{n}", noisy_key) for n in range(6)]
            await until(lambda: len(storage.reached) == 2 and share.waiting() == 4)
            quiet = get("free", quiet_key)
            await until(lambda: share.waiting() == 5)  # queued too: every slot is taken
            storage.gate.set()
            for call in [quiet, *noisy]:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                assert refused.value.code() is grpc.StatusCode.NOT_FOUND
        # The first slot freed went to the principal holding none, not to the noisy backlog.
        assert storage.reached[2] == "free"
        assert sorted(storage.reached) == sorted(["free", *(f"held-{n}" for n in range(6))])
        assert share.in_use == 0
    finally:
        await running.stop(grace=0)


async def until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not check():
        assert time.monotonic() < deadline, "never happened"
        await asyncio.sleep(0.01)


class RecordingStorage(InMemoryEventStorage):
    """Records whom each read of a page was made for."""

    def __init__(self) -> None:
        super().__init__()
        self.served: list[str | None] = []

    async def read(
        self, aggregate_id: str, start: int | None, direction: Direction, limit: int
    ) -> list[RecordedEvent]:
        self.served.append(serving.get())
        return await super().read(aggregate_id, start, direction, limit)


async def test_every_page_of_a_read_takes_the_callers_share_not_only_the_first(
    tmp_path: Path,
) -> None:
    """Each step of a server stream runs as a task of its own (to end it on shutdown between
    messages); they share one context, so what names the caller holds for every page."""
    key = new_key()
    permissions = tmp_path / "permissions.yaml"
    permissions.write_text(
        f"principals:\n  reader:\n    keys: ['{hash_key(key)}']\n    read: [T]\n"
    )
    storage = RecordingStorage()
    events = [NewEvent(uuid4(), "E", b"{}", "application/json") for _ in range(5)]
    await storage.append("long-1", "T", 0, events, datetime.now(UTC))
    settings = ServerSettings(
        listen="127.0.0.1:0", auth_disabled=False, permissions_file=permissions, read_page_size=2
    )
    running = await start(settings, Components(storage))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.EventStoreStub(channel)
            call = stub.ReadAggregate(
                pb.ReadAggregateRequest(aggregate_id="long-1"),
                metadata=[("authorization", f"Bearer {key}")],
                timeout=10,
            )
            versions = [event.version async for message in call for event in message.events]
        assert versions == [1, 2, 3, 4, 5]
        assert storage.served == ["reader", "reader", "reader"]  # pages of 2, 2 and 1
    finally:
        await running.stop(grace=0)
