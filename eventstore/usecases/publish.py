"""Publish every committed event, at least once and in version order per aggregate.

Two paths feed the same per-aggregate sender:

* the request path: right after a commit, the append hands its events over (the RPC does not
  wait for Kafka);
* the relay: every `interval_s` it reads the outbox markers (written *before* each commit) and
  catches up every aggregate whose marker is older than `min_age_s` — after a crash between
  commit and publish, a Kafka outage, or a full producer queue.

Order: for each aggregate one lock serialises hand-overs to the producer, and a hand-over
always starts right after the last version handed over or known published: a gap (events
another replica committed, or a failed earlier send) is filled from Cassandra first. The
producer keeps per-partition order (idempotent), so the first copy of each version reaches
Kafka in version order. Copies can repeat (a crash after Kafka acknowledged but before the
cursor moved, or two replicas on one aggregate); consumers drop them by (aggregate_id, version).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import structlog

from eventstore.domain.errors import StorageUnavailable
from eventstore.domain.events import Direction, RecordedEvent
from eventstore.ports import Delivery, EventPublisher, EventStorage, PublicationLog, PublishFailed

log = structlog.get_logger(__name__)

T = TypeVar("T")

READ_PAGE = 500
#: Per-aggregate state kept for this many recently published aggregates.
STATE_CAPACITY = 100_000


@dataclass
class _Stream:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: highest version handed to the producer, in order, with all earlier ones
    handed: int = 0
    #: highest version confirmed published, with all earlier ones
    confirmed: int = 0
    #: confirmed ranges not yet contiguous with `confirmed`
    done: list[tuple[int, int]] = field(default_factory=list)
    in_flight: int = 0
    #: whether handed/confirmed have been initialised from the cursor
    loaded: bool = False


class Publication:
    def __init__(
        self,
        storage: EventStorage,
        outbox: PublicationLog,
        publisher: EventPublisher,
        interval_s: float = 1.0,
        min_age_s: float = 5.0,
        max_in_flight: int = 10_000,
        on_published: Callable[[float], None] | None = None,
    ) -> None:
        self._storage = storage
        self._outbox = outbox
        self._publisher = publisher
        self._interval = interval_s
        self._min_age = timedelta(seconds=min_age_s)
        self._max_in_flight = max_in_flight
        #: told, for each append the request path published, the seconds since its commit
        self._on_published = on_published
        self._streams: OrderedDict[str, _Stream] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        #: aggregate -> confirmed version whose cursor/markers still need writing
        self._dirty: dict[str, int] = {}
        self._stopping = asyncio.Event()
        self.backlog = 0

    # --- request path ------------------------------------------------------------------

    def committed(self, events: Sequence[RecordedEvent]) -> None:
        """Publish freshly committed events in the background (the append does not wait)."""
        if len(self._tasks) >= self._max_in_flight:
            log.warning(
                "publication queue full; the relay will publish",
                aggregate_id=events[0].aggregate_id,
            )
            return
        self._spawn(self._publish_committed(events))

    async def _publish_committed(self, events: Sequence[RecordedEvent]) -> None:
        aggregate_id = events[0].aggregate_id
        committed = time.monotonic()
        try:
            confirmation = await self._publish(aggregate_id, events[-1].version, list(events))
            if confirmation is not None and await confirmation and self._on_published:
                self._on_published(time.monotonic() - committed)
        except (PublishFailed, StorageUnavailable) as exc:
            log.warning(
                "publish failed; the relay will retry", aggregate_id=aggregate_id, error=str(exc)
            )

    # --- relay -------------------------------------------------------------------------

    async def catch_up(self, aggregate_id: str) -> None:
        """Publish whatever of the aggregate is committed but not confirmed published."""
        head = (await self._storage.stream_state(aggregate_id)).version
        await self._publish(aggregate_id, head, [])
        state = self._streams.get(aggregate_id)
        if state is not None and state.confirmed:
            # Retire the markers the cursor already covers (e.g. the process stopped between
            # writing the cursor and deleting them).
            self._dirty[aggregate_id] = max(self._dirty.get(aggregate_id, 0), state.confirmed)

    async def relay_once(self) -> int:
        cutoff = datetime.now(UTC) - self._min_age
        aggregates = await self._outbox.pending(older_than=cutoff)
        self.backlog = len(aggregates)
        if aggregates:
            log.info(
                "relay: publishing committed but unpublished events", aggregates=len(aggregates)
            )
        for aggregate_id in aggregates:
            try:
                await self.catch_up(aggregate_id)
            except (PublishFailed, StorageUnavailable) as exc:
                log.warning(
                    "relay: still cannot publish", aggregate_id=aggregate_id, error=str(exc)
                )
                break  # Kafka or Cassandra is down: try again next round
        await self.flush()
        return len(aggregates)

    async def run(self) -> None:
        """The relay loop; also writes the cursors of the request path. Ends on stop()."""
        while not self._stopping.is_set():
            try:
                await self.relay_once()
            except StorageUnavailable as exc:
                log.warning("relay: cannot read the outbox", error=str(exc))
            except Exception:
                log.exception("relay round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)

    async def stop(self, grace_s: float) -> None:
        """Stop the relay; give publications in flight `grace_s` to be confirmed."""
        self._stopping.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settle(), grace_s)
        with contextlib.suppress(StorageUnavailable):
            await self.flush()

    async def _settle(self) -> None:
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    # --- the per-aggregate sender ------------------------------------------------------

    def _state(self, aggregate_id: str) -> _Stream:
        state = self._streams.get(aggregate_id)
        if state is None:
            state = self._streams[aggregate_id] = _Stream()
            self._evict()
        else:
            self._streams.move_to_end(aggregate_id)
        return state

    def _evict(self) -> None:
        while len(self._streams) > STATE_CAPACITY:
            aggregate_id, state = next(iter(self._streams.items()))
            if state.in_flight or state.lock.locked():
                self._streams.move_to_end(aggregate_id)
                return
            del self._streams[aggregate_id]

    async def _publish(
        self, aggregate_id: str, last: int, fresh: list[RecordedEvent]
    ) -> asyncio.Task[bool] | None:
        """Hand the aggregate's unpublished events up to `last` to the producer, in order.

        Returns once they are handed over; their confirmation is awaited in the background so
        that neither the request path nor the relay waits on Kafka (which may be down).
        """
        state = self._state(aggregate_id)
        async with state.lock:
            first_fresh = fresh[0].version if fresh else last + 1
            if not state.loaded:
                # A brand-new aggregate has nothing earlier to publish: no need to ask.
                if first_fresh > 1:
                    known = await self._outbox.published_through(aggregate_id)
                    state.handed = state.confirmed = known
                state.loaded = True
            if state.handed >= last:
                return None
            if state.handed < first_fresh - 1:
                # Someone else may have published the gap meanwhile (another replica).
                known = await self._outbox.published_through(aggregate_id)
                if known > state.confirmed:
                    state.handed = max(state.handed, known)
                    state.confirmed = max(state.confirmed, known)
            start = state.handed + 1
            if start > last:
                return None
            deliveries = []
            version = start
            try:
                while version < first_fresh and version <= last:
                    page = await self._storage.read(
                        aggregate_id,
                        version,
                        Direction.FORWARDS,
                        min(READ_PAGE, first_fresh - version),
                    )
                    if not page:
                        break
                    deliveries.append(await self._publisher.send(page))
                    version = page[-1].version + 1
                tail = [event for event in fresh if event.version >= version]
                if tail:
                    deliveries.append(await self._publisher.send(tail))
            except (PublishFailed, StorageUnavailable):
                # Part may be queued already; start over from the cursor next time.
                self._forget(aggregate_id, state)
                raise
            state.handed = last
            state.in_flight += 1
        return self._spawn(self._confirmed(aggregate_id, state, deliveries, start, last))

    async def _confirmed(
        self, aggregate_id: str, state: _Stream, deliveries: list[Delivery], first: int, last: int
    ) -> bool:
        try:
            for delivery in deliveries:
                await delivery.wait()
        except PublishFailed as exc:
            log.warning(
                "publish failed; the relay will retry", aggregate_id=aggregate_id, error=str(exc)
            )
            self._forget(aggregate_id, state)
            return False
        finally:
            state.in_flight -= 1
        self._confirm(aggregate_id, state, first, last)
        return True

    def _forget(self, aggregate_id: str, state: _Stream) -> None:
        """Drop what we believed handed over; the next attempt starts from the cursor."""
        if self._streams.get(aggregate_id) is state:
            del self._streams[aggregate_id]

    def _spawn(self, coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self) -> None:
        """Wait for every publication in flight, then write the cursors."""
        await self._settle()
        await self.flush()

    def _confirm(self, aggregate_id: str, state: _Stream, first: int, last: int) -> None:
        state.done.append((first, last))
        state.done.sort()
        advanced = False
        while state.done and state.done[0][0] <= state.confirmed + 1:
            state.confirmed = max(state.confirmed, state.done.pop(0)[1])
            advanced = True
        if advanced:
            self._dirty[aggregate_id] = max(self._dirty.get(aggregate_id, 0), state.confirmed)

    async def flush(self) -> None:
        """Write the cursors (and retire markers) of what was confirmed since last time.

        Batched once per relay round rather than per append: the markers keep everything safe
        meanwhile, and this bounds the number of tombstones to one per aggregate per round.
        """
        dirty, self._dirty = self._dirty, {}
        for aggregate_id, version in dirty.items():
            try:
                await self._outbox.mark_published(aggregate_id, version)
            except StorageUnavailable:
                self._dirty[aggregate_id] = max(self._dirty.get(aggregate_id, 0), version)
                raise
