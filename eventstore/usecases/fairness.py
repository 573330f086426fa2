"""Fair shares of Cassandra (and of OpenSearch) among principals, per server process.

Quotas bound what each principal may ask for, but within its quotas one principal can still
keep Cassandra busy (up to `max_calls_in_flight` long reads at once), and Cassandra serves
what it is sent first come, first served: another principal's append then waits behind the
whole backlog. Here every Cassandra call made for a caller (events and snapshots) takes one of
`capacity` slots first, and every search one of OpenSearch's own.
While slots are free nobody waits; once they are all taken, a freed slot goes to the waiting
principal that holds the fewest (the longest-waiting call among equals), so a principal that
asks for little is served within about one storage call of anybody's, however many calls
another has queued. That is max-min fairness on slots, the idea of Kubernetes' API Priority and
Fairness and of fair queuing in routers, with one queue per principal.

The slot is held for one storage call (one page of a read), not for a whole RPC: a stream
whose client stops reading holds none. Work the server does for itself (publication, takeover
of a dead writer's journal) names no principal and is not queued behind callers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from datetime import datetime
from itertools import count
from typing import TypeVar

from eventstore.domain.events import AggregateInfo, Direction, NewEvent, RecordedEvent
from eventstore.domain.queries import EventQuery, IndexProgress, SearchPage
from eventstore.domain.snapshots import Snapshot
from eventstore.ports import AppendOutcome, EventIndex, EventStorage, SnapshotStore, StreamState

T = TypeVar("T")

#: The principal the running task serves (set by the API layer per call; each RPC runs in a
#: task of its own, so the value ends with the call). None: the server's own work.
serving: ContextVar[str | None] = ContextVar("eventstore_serving", default=None)


class _Waiter:
    __slots__ = ("future", "seq")

    def __init__(self, future: asyncio.Future[None], seq: int) -> None:
        self.future = future
        self.seq = seq


class FairShare:
    """`capacity` slots shared max-min fairly among principals (see the module's doc)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._in_use = 0
        self._held: dict[str, int] = {}
        self._queues: dict[str, deque[_Waiter]] = {}
        self._seq = count()

    @property
    def in_use(self) -> int:
        return self._in_use

    def waiting(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    async def run(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call()` in a slot of the principal the task serves; at once for the server's own
        work."""
        who = serving.get()
        if who is None:
            return await call()
        await self.acquire(who)
        try:
            return await call()
        finally:
            self.release(who)

    async def acquire(self, who: str) -> None:
        if self._in_use < self.capacity and not self._queues:
            self._take(who)
            return
        waiter = _Waiter(asyncio.get_running_loop().create_future(), next(self._seq))
        self._queues.setdefault(who, deque()).append(waiter)
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                # Granted in the same step as the cancellation: hand the slot on.
                self.release(who)
            else:
                self._forget(who, waiter)
            raise

    def release(self, who: str) -> None:
        held = self._held[who] - 1
        if held:
            self._held[who] = held
        else:
            del self._held[who]
        self._in_use -= 1
        self._grant()

    def _take(self, who: str) -> None:
        self._held[who] = self._held.get(who, 0) + 1
        self._in_use += 1

    def _grant(self) -> None:
        while self._in_use < self.capacity and self._queues:
            # The waiting principal holding the fewest slots; among equals, the oldest call.
            who = min(
                self._queues,
                key=lambda name: (self._held.get(name, 0), self._queues[name][0].seq),
            )
            queue = self._queues[who]
            waiter = queue.popleft()
            if not queue:
                del self._queues[who]
            if waiter.future.cancelled():
                continue
            self._take(who)
            waiter.future.set_result(None)

    def _forget(self, who: str, waiter: _Waiter) -> None:
        queue = self._queues.get(who)
        if queue is None:
            return
        try:
            queue.remove(waiter)
        except ValueError:
            return
        if not queue:
            del self._queues[who]


class FairStorage(EventStorage):
    """An `EventStorage` whose calls made for a caller (`serving` set) take a `FairShare` slot
    each; the server's own calls pass straight through."""

    def __init__(self, inner: EventStorage, share: FairShare) -> None:
        self._inner = inner
        self._share = share

    async def stream_state(self, aggregate_id: str) -> StreamState:
        return await self._share.run(lambda: self._inner.stream_state(aggregate_id))

    async def settled_state(self, aggregate_id: str) -> StreamState:
        return await self._share.run(lambda: self._inner.settled_state(aggregate_id))

    async def append(
        self,
        aggregate_id: str,
        aggregate_type: str,
        expected_version: int,
        events: Sequence[NewEvent],
        recorded_at: datetime,
    ) -> AppendOutcome:
        return await self._share.run(
            lambda: self._inner.append(
                aggregate_id, aggregate_type, expected_version, events, recorded_at
            )
        )

    async def read(
        self, aggregate_id: str, start: int | None, direction: Direction, limit: int
    ) -> list[RecordedEvent]:
        return await self._share.run(
            lambda: self._inner.read(aggregate_id, start, direction, limit)
        )

    async def describe(self, aggregate_id: str) -> AggregateInfo | None:
        return await self._share.run(lambda: self._inner.describe(aggregate_id))

    async def close(self) -> None:
        await self._inner.close()


class FairSnapshots(SnapshotStore):
    """Snapshots live in Cassandra too: the same share as the events."""

    def __init__(self, inner: SnapshotStore, share: FairShare) -> None:
        self._inner = inner
        self._share = share

    async def save(self, snapshot: Snapshot) -> None:
        await self._share.run(lambda: self._inner.save(snapshot))

    async def latest(self, aggregate_id: str, max_version: int | None) -> Snapshot | None:
        return await self._share.run(lambda: self._inner.latest(aggregate_id, max_version))

    async def delete(self, aggregate_id: str) -> int:
        return await self._share.run(lambda: self._inner.delete(aggregate_id))


class FairIndex(EventIndex):
    """Searches for callers take a slot of OpenSearch's own share."""

    def __init__(self, inner: EventIndex, share: FairShare) -> None:
        self._inner = inner
        self._share = share

    async def search(self, query: EventQuery) -> SearchPage:
        return await self._share.run(lambda: self._inner.search(query))

    async def progress(self, permitted_types: frozenset[str] | None = None) -> IndexProgress:
        return await self._share.run(lambda: self._inner.progress(permitted_types))

    async def erase_subject(self, subject: str) -> int:
        return await self._share.run(lambda: self._inner.erase_subject(subject))

    async def close(self) -> None:
        await self._inner.close()
