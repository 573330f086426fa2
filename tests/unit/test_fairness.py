"""Max-min fair shares of storage calls among principals (eventstore.usecases.fairness)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from uuid import uuid4

import pytest

from eventstore.domain.events import Direction, NewEvent
from eventstore.storage.memory import InMemoryEventStorage
from eventstore.usecases.fairness import FairShare, FairStorage, serving


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
    assert granted == [] and share.waiting() == 11
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
    assert share.in_use == 0 and share.waiting() == 0


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
        storage.append("a-1", "Order", 0, [NewEvent(uuid4(), "Placed", b"{}", "application/json")], now), 1
    )
    assert outcome is not None

    async def for_caller() -> int:
        serving.set("quiet")
        return len(await storage.read("a-1", 1, Direction.FORWARDS, 10))

    read = asyncio.create_task(for_caller())
    await settle()
    assert not read.done() and share.waiting() == 1
    share.release("someone")
    assert await asyncio.wait_for(read, 1) == 1
    assert share.in_use == 0
