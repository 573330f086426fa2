"""Graceful shutdown at the RPC level.

Once shutdown begins, new RPCs are refused with UNAVAILABLE (retryable; another replica will
answer), RPCs in flight are let finish, and streams end with UNAVAILABLE between two messages
(the client resumes from the checkpoint of the last one). gRPC's own stop() would cancel what
is still running when its grace ends, and a cancelled append leaves the client unsure whether
it was written; draining first means clients only ever see a clean refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

import structlog

from eventstore.domain.errors import EventStoreError

log = structlog.get_logger(__name__)

T = TypeVar("T")


class NotReady(EventStoreError):
    """This replica is starting: its backends are not connected yet (another may serve)."""

    def __init__(self) -> None:
        super().__init__("this replica is starting; retry, another replica may serve")


class ShuttingDown(EventStoreError):
    """This replica is draining: it refuses new RPCs (another replica will serve them)."""

    def __init__(self) -> None:
        super().__init__("this replica is draining; retry, another replica may serve")


class BackendNotConfigured(EventStoreError):
    """This server was built without the backend an RPC needs (tests, partial set-ups): no
    retry can help, on this replica or on any other built the same way."""


class Admission:
    def __init__(self) -> None:
        self._draining = asyncio.Event()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def unary(self) -> Iterator[None]:
        if self._draining.is_set():
            raise ShuttingDown()
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def stream(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """Pass `items` through until shutdown begins, then end with ShuttingDown."""
        if self._draining.is_set():
            raise ShuttingDown()
        iterator = aiter(items)
        draining = asyncio.ensure_future(self._draining.wait())
        following: asyncio.Future[T] | None = None
        # Every step in one context, as if the stream ran in one task: what a step sets
        # (whose share of Cassandra its reads take, the log's bound fields) holds for the next.
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()

        async def step() -> T:
            return await anext(iterator)

        try:
            while True:
                following = loop.create_task(step(), context=context)
                await asyncio.wait({following, draining}, return_when=asyncio.FIRST_COMPLETED)
                if not following.done():
                    raise ShuttingDown()
                try:
                    item = following.result()
                except StopAsyncIteration:
                    return
                yield item
        finally:
            # Whether we end, are drained or the client went away (cancelled): stop the
            # pending step first, or the generator cannot be closed (it would still be running
            # and keep its resources, e.g. a subscription's Kafka consumer).
            draining.cancel()
            if following is not None and not following.done():
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await following
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()

    async def drain(self, timeout_s: float) -> None:
        """Refuse new RPCs; wait (at most `timeout_s`) for the unary ones in flight."""
        self._draining.set()
        log.info("draining: refusing new RPCs", in_flight=self._in_flight)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("grace period over with RPCs in flight", in_flight=self._in_flight)
        else:
            log.info("drained")
