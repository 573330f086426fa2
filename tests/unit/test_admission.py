"""Graceful shutdown at the RPC level: refuse new calls, let running ones finish, end streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from eventstore.api.admission import Admission, ShuttingDown


async def test_running_calls_finish_and_new_ones_are_refused() -> None:
    admission = Admission()
    release = asyncio.Event()

    async def call() -> str:
        with admission.unary():
            await release.wait()
            return "done"

    running = asyncio.create_task(call())
    await asyncio.sleep(0)
    draining = asyncio.create_task(admission.drain(timeout_s=5))
    await asyncio.sleep(0.01)
    assert not draining.done(), "drain waits for the call in flight"
    with pytest.raises(ShuttingDown), admission.unary():
        pass
    release.set()
    assert await running == "done"
    await asyncio.wait_for(draining, 1)


async def test_streams_end_between_messages() -> None:
    admission = Admission()

    async def endless() -> AsyncIterator[int]:
        n = 0
        while True:
            yield n
            n += 1
            await asyncio.sleep(0.01)

    received: list[int] = []

    async def consume() -> None:
        async for item in admission.stream(endless()):
            received.append(item)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    await admission.drain(timeout_s=1)
    with pytest.raises(ShuttingDown):
        await task
    assert received == list(range(len(received)))
    assert received


async def test_a_cancelled_stream_closes_its_source() -> None:
    admission = Admission()
    closed = asyncio.Event()

    async def source() -> AsyncIterator[int]:
        try:
            yield 1
            await asyncio.sleep(3600)  # waiting for the next event
            yield 2
        finally:
            closed.set()

    async def consume() -> None:
        async for _ in admission.stream(source()):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    task.cancel()  # the client went away
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed.is_set(), "the source (and what it holds) must be closed"
