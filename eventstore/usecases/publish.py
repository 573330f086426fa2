"""Publish every committed event, at least once and in version order per aggregate.

Two paths feed the same per-aggregate sender:

* the request path: right after a commit, the append hands its events over (the RPC does not
  wait for Kafka); when Kafka confirms them, the append's journal entry is settled
  (usecases/journal.py);
* the relay, every `interval_s`: it catches up the aggregates of this process's *orphaned*
  journal entries (appends whose outcome was unknown, whose hand-over the producer refused or
  whose delivery failed), of the journals of *silent* writers (replicas whose heartbeat stopped
  `takeover_after_s` ago: they crashed), and of *parked* aggregates.

Order: for each aggregate one lock serialises hand-overs to the producer, and a hand-over
always starts right after the last version handed over or known published: a gap (events
another replica committed, or a failed earlier send) is filled from Cassandra first. The
producer keeps per-partition order (idempotent), so the first copy of each version reaches
Kafka in version order. Copies can repeat (a crash after Kafka acknowledged but before the
journal was settled, or two replicas on one aggregate); consumers drop them by
(aggregate_id, version).

Isolation: every aggregate is caught up on its own. One that fails for a reason of its own (a
record the topic refuses, a topic that cannot be created) is *parked*: recorded with the reason
where operators can list it (`eventstore-replay parked`, the `eventstore_parked_aggregates`
metric), retried with its own exponential backoff, and never blocks any other aggregate. Only a
failure of Kafka or Cassandra as a whole (nothing can be published) pauses the relay's round.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import structlog

from eventstore.domain.errors import StorageUnavailable
from eventstore.domain.events import Direction, RecordedEvent
from eventstore.ports import (
    Delivery,
    EventPublisher,
    EventStorage,
    ParkedAggregate,
    PublicationLog,
    PublisherUnavailable,
    PublishFailed,
    WriterState,
)
from eventstore.usecases.journal import WriterJournal

log = structlog.get_logger(__name__)

T = TypeVar("T")

READ_PAGE = 500
#: Per-aggregate state kept for this many recently published aggregates.
STATE_CAPACITY = 100_000
#: Journal entries read per page when catching up.
ENTRY_PAGE = 200
#: Aggregates caught up at once by one replay.
CATCH_UP_CONCURRENCY = 32
#: Parked aggregates are retried after 2^attempts seconds, at most this long.
MAX_PARK_BACKOFF_S = 300.0
#: A silent writer whose journal is settled is removed after this long.
RETIRE_AFTER = timedelta(hours=1)


class _Global(Exception):
    """Nothing can be published now (Kafka or Cassandra down): stop, retry next round."""


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
    #: futures settled once `confirmed` reaches their version (or failed if we lose track)
    waiting: list[tuple[int, asyncio.Future[None]]] = field(default_factory=list)


class Publication:
    def __init__(
        self,
        storage: EventStorage,
        outbox: PublicationLog,
        publisher: EventPublisher,
        journal: WriterJournal | None = None,
        interval_s: float = 1.0,
        takeover_after_s: float = 10.0,
        max_in_flight: int = 10_000,
        on_published: Callable[[float], None] | None = None,
        on_round: Callable[[float], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._storage = storage
        self._outbox = outbox
        self._publisher = publisher
        self.journal = journal or WriterJournal(outbox)
        self._interval = interval_s
        self._takeover_after = timedelta(seconds=takeover_after_s)
        self._max_in_flight = max_in_flight
        #: told, for each append the request path published, the seconds since its commit
        self._on_published = on_published
        #: told how long each relay round took to find and start its work
        self._on_round = on_round
        self._clock = clock
        self._streams: OrderedDict[str, _Stream] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        #: aggregate -> confirmed version whose cursor still needs writing
        self._dirty: dict[str, int] = {}
        #: background catch-ups by key (own entry seq, silent writer), one at a time each
        self._replays: dict[object, asyncio.Task[None]] = {}
        self._catching_up: set[str] = set()
        #: silent writers whose journal was read to its end, with the seq it ended at
        self._drained: dict[UUID, int] = {}
        self._stopping = asyncio.Event()
        self.parked_count = 0

    @property
    def backlog(self) -> int:
        """Aggregates the relay is catching up or has parked."""
        return len(self._catching_up) + self.parked_count

    # --- request path ------------------------------------------------------------------

    async def announce(self, aggregate_id: str, creates_type: str | None = None) -> int:
        """Before an append's commit: note it in the journal (group commit); its seq."""
        return await self.journal.announce(aggregate_id, creates_type)

    def not_committed(self, seq: int) -> None:
        """The announced append is known not to have committed anything."""
        self.journal.settled(seq)

    def outcome_unknown(self, seq: int) -> None:
        """The announced append may have committed: the relay catches its aggregate up."""
        self.journal.orphaned(seq)

    def committed(self, events: Sequence[RecordedEvent], seq: int | None = None) -> None:
        """Publish freshly committed events in the background (the append does not wait)."""
        if len(self._tasks) >= self._max_in_flight:
            log.warning(
                "publication queue full; the relay will publish",
                aggregate_id=events[0].aggregate_id,
            )
            if seq is not None:
                self.journal.orphaned(seq)
            return
        self._spawn(self._publish_committed(events, seq))

    async def _publish_committed(self, events: Sequence[RecordedEvent], seq: int | None) -> None:
        aggregate_id = events[0].aggregate_id
        last = events[-1].version
        committed = time.monotonic()
        try:
            confirmation = await self._publish(aggregate_id, last, list(events))
        except (PublishFailed, StorageUnavailable) as exc:
            log.warning(
                "publish failed; the relay will retry", aggregate_id=aggregate_id, error=str(exc)
            )
            if seq is not None:
                self.journal.orphaned(seq)
            return
        watcher = self._watch(aggregate_id, last)
        if seq is not None:
            watcher.add_done_callback(lambda f: self._settle_seq(seq, f))
        if confirmation is not None and await confirmation and self._on_published:
            self._on_published(time.monotonic() - committed)

    def _settle_seq(self, seq: int, watcher: asyncio.Future[None]) -> None:
        if watcher.cancelled() or watcher.exception() is not None:
            self.journal.orphaned(seq)
        else:
            self.journal.settled(seq)

    # --- the relay -----------------------------------------------------------------------

    async def start(self, within_s: float = 60.0) -> None:
        """Register this writer (its first heartbeat) before any append is announced; a
        Cassandra that cannot take the write yet (a replica restarting: WriteTimeout) is asked
        again for `within_s`, as the connection itself is at start-up."""
        deadline = time.monotonic() + within_s
        delay = 0.5
        while True:
            try:
                await self.journal.beat()
                return
            except StorageUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("writer not registered yet; retrying", error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def run(self) -> None:
        """The relay loop (and the heartbeat); ends on stop()."""
        beating = asyncio.create_task(self._beat_loop(), name="journal-heartbeat")
        try:
            while not self._stopping.is_set():
                try:
                    await self.relay_once()
                except StorageUnavailable as exc:
                    log.warning("relay: Cassandra unavailable", error=str(exc))
                except Exception:
                    log.exception("relay round failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._interval)
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating

    async def _beat_loop(self) -> None:
        # Apart from the relay's round, which may wait on Kafka: a replica that is alive must
        # never look silent to the others.
        while not self._stopping.is_set():
            try:
                await self.flush()
                await self.journal.beat()
            except StorageUnavailable as exc:
                log.warning("relay: heartbeat not recorded", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)

    async def relay_once(self) -> None:
        """One round: start catching up what needs it (in the background; each catch-up at
        most once at a time), then write the cursors."""
        started = time.monotonic()
        for seq in self.journal.orphans()[:ENTRY_PAGE]:
            self._replay(("own", seq), functools.partial(self._replay_own, seq))
        writers = await self._outbox.writers()
        for silent in self._silent_writers_for_me(writers):
            self._replay(("writer", silent.writer), functools.partial(self._take_over, silent))
        if self._leads(writers):
            self._replay("parked", self._retry_parked)
        else:
            # Only the leader retries them; every replica reports how many there are.
            self.parked_count = len(await self._outbox.parked())
        if self._on_round is not None:
            self._on_round(time.monotonic() - started)
        await self.flush()

    def _replay(self, key: object, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start `work` in the background unless the same step still runs. It is made into a
        coroutine only inside its task: a task cancelled before its first step (a shutdown)
        must leave no coroutine behind that was never awaited."""
        running = self._replays.get(key)
        if running is not None and not running.done():
            return
        task = self._spawn(self._guarded(key, work))
        self._replays[key] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._replays.get(key) is done:
                del self._replays[key]

        task.add_done_callback(forget)

    @staticmethod
    async def _guarded(key: object, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """A background step of the relay whose failure is logged, never left in its task:
        each is started again by a later round (its orphan, silent writer or parked entries
        are still there). Seen under load: reading the parked entries timed out, and asyncio
        reported "Task exception was never retrieved"."""
        try:
            await work()
        except StorageUnavailable as exc:
            log.warning("relay: step failed, retried next round", step=str(key), error=str(exc))
        except Exception:
            log.exception("relay: step failed, retried next round", step=str(key))

    def _live(self, writers: list[WriterState]) -> list[UUID]:
        cutoff = self._clock() - self._takeover_after
        live = {w.writer for w in writers if w.heartbeat >= cutoff}
        live.add(self.journal.writer)
        return sorted(live)

    def _leads(self, writers: list[WriterState]) -> bool:
        return self._live(writers)[0] == self.journal.writer

    def _silent_writers_for_me(self, writers: list[WriterState]) -> list[WriterState]:
        """Silent writers this replica takes over: each to one live replica (by id), so the
        replicas share the work; if they disagree for a moment, both publish (harmless)."""
        live = self._live(writers)
        me = live.index(self.journal.writer)
        cutoff = self._clock() - self._takeover_after
        silent = [w for w in writers if w.heartbeat < cutoff and w.writer != self.journal.writer]
        return [w for w in silent if w.writer.int % len(live) == me]

    async def _replay_own(self, seq: int) -> None:
        entries = await self._outbox.entries(self.journal.writer, seq - 1, 1)
        aggregates = entries[0][1] if entries and entries[0][0] == seq else []
        try:
            await self._catch_up_all(aggregates)
        except _Global:
            return
        self.journal.replayed(seq)

    async def _take_over(self, silent: WriterState) -> None:
        """Publish what a silent writer's unsettled entries name; retire it when done."""
        settled = silent.resolved
        # A silent writer writes nothing more: once drained, no need to read its journal again.
        while self._drained.get(silent.writer) != settled:
            entries = await self._outbox.entries(silent.writer, settled, ENTRY_PAGE)
            if not entries:
                break
            log.info(
                "relay: taking over a silent writer's journal",
                writer=str(silent.writer),
                after=settled,
                entries=len(entries),
            )
            aggregates = list(dict.fromkeys(a for _, ids in entries for a in ids))
            try:
                await self._catch_up_all(aggregates)
            except _Global:
                return
            settled = entries[-1][0]
            await self._outbox.settle(silent.writer, settled)
        self._drained[silent.writer] = settled
        if self._clock() - silent.heartbeat > RETIRE_AFTER:
            await self._outbox.forget(silent.writer, silent.resolved, settled, retire=True)
            self._drained.pop(silent.writer, None)
            log.info("relay: retired a silent writer", writer=str(silent.writer))

    async def _retry_parked(self) -> None:
        parked = await self._outbox.parked()
        self.parked_count = len(parked)
        now = self._clock()
        for entry in parked:
            if entry.next_attempt_at > now:
                continue
            try:
                await self._catch_up_one(entry.aggregate_id)
            except _Global:
                return
            except (PublishFailed, StorageUnavailable) as exc:
                await self._park(entry.aggregate_id, str(exc), entry)
                continue
            await self._outbox.unpark(entry.aggregate_id)
            self.parked_count -= 1
            log.info("relay: parked aggregate published", aggregate_id=entry.aggregate_id)

    async def _catch_up_all(self, aggregates: Sequence[str]) -> None:
        """Catch every aggregate up, each on its own: one that fails is parked, and does not
        hold back the others. Raises _Global if Kafka or Cassandra as a whole is down."""
        gate = asyncio.Semaphore(CATCH_UP_CONCURRENCY)
        down: list[Exception] = []

        async def one(aggregate_id: str) -> None:
            async with gate:
                if down:
                    return
                try:
                    await self._catch_up_one(aggregate_id)
                except _Global as exc:
                    down.append(exc)
                except (PublishFailed, StorageUnavailable) as exc:
                    await self._park(aggregate_id, str(exc), None)

        await asyncio.gather(*(one(a) for a in aggregates))
        if down:
            raise down[0]

    async def _catch_up_one(self, aggregate_id: str) -> None:
        """Publish whatever of the aggregate is committed and not confirmed; wait for Kafka."""
        self._catching_up.add(aggregate_id)
        try:
            try:
                # Settled, not merely read: the append that sent us here may have been
                # accepted by a quorum and left uncommitted (its outcome unknown, or its
                # writer dead). A plain read would miss it, and when a later Paxos round (the
                # client's retry) commits it, nothing would publish it any more. Seen in the
                # Cassandra node-kill fault test: the last version of an aggregate stored,
                # never in Kafka.
                head = (await self._storage.settled_state(aggregate_id)).version
            except StorageUnavailable as exc:
                raise _Global(str(exc)) from exc
            if head == 0:
                return  # an announced append that never committed
            try:
                await self._publish(aggregate_id, head, [])
            except (PublisherUnavailable, StorageUnavailable) as exc:
                raise _Global(str(exc)) from exc
            await self._watch(aggregate_id, head)
            state = self._streams.get(aggregate_id)
            if state is not None and state.confirmed:
                # Write the cursor even if nothing was sent: the cursor may be behind.
                self._dirty[aggregate_id] = max(self._dirty.get(aggregate_id, 0), state.confirmed)
        finally:
            self._catching_up.discard(aggregate_id)

    async def _park(self, aggregate_id: str, reason: str, before: ParkedAggregate | None) -> None:
        now = self._clock()
        attempts = (before.attempts if before else 0) + 1
        backoff = min(2.0**attempts, MAX_PARK_BACKOFF_S)
        parked = ParkedAggregate(
            aggregate_id=aggregate_id,
            reason=reason[:1000],
            since=before.since if before else now,
            attempts=attempts,
            next_attempt_at=now + timedelta(seconds=backoff),
        )
        log.error(
            "relay: aggregate parked; its publication keeps failing",
            aggregate_id=aggregate_id,
            reason=parked.reason,
            attempts=attempts,
            retry_in_s=backoff,
        )
        with contextlib.suppress(StorageUnavailable):
            await self._outbox.park(parked)
        if before is None:
            self.parked_count += 1

    async def stop(self, grace_s: float) -> None:
        """Stop the relay; give publications in flight `grace_s` to be confirmed."""
        self._stopping.set()
        for task in list(self._replays.values()):
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settle(), grace_s)
        with contextlib.suppress(StorageUnavailable):
            await self.flush()
            if await self.journal.retire():
                log.info("publication settled; writer retired", writer=str(self.journal.writer))
        await self.journal.close()

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
            if state.in_flight or state.lock.locked() or state.waiting:
                self._streams.move_to_end(aggregate_id)
                return
            del self._streams[aggregate_id]

    def _watch(self, aggregate_id: str, version: int) -> asyncio.Future[None]:
        """A future settled once `version` and all before it are confirmed published, or
        failed (PublishFailed) if this process loses track of them first."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        state = self._streams.get(aggregate_id)
        if state is None:
            future.set_exception(PublishFailed("publication state was dropped"))
        elif state.confirmed >= version:
            future.set_result(None)
        else:
            state.waiting.append((version, future))
        return future

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
                    self._release(state)
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
            except (PublishFailed, StorageUnavailable) as exc:
                # Part may be queued already; start over from the cursor next time.
                self._forget(aggregate_id, state, exc)
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
            self._forget(aggregate_id, state, exc)
            return False
        finally:
            state.in_flight -= 1
        self._confirm(aggregate_id, state, first, last)
        return True

    def _forget(self, aggregate_id: str, state: _Stream, why: Exception) -> None:
        """Drop what we believed handed over; the next attempt starts from the cursor. Whoever
        waits for a confirmation learns it will not come."""
        if self._streams.get(aggregate_id) is state:
            del self._streams[aggregate_id]
        waiting, state.waiting = state.waiting, []
        for _, future in waiting:
            if not future.done():
                future.set_exception(PublishFailed(str(why)))
                future.exception()  # retrieved: a failure here is handled by the callbacks

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
            self._release(state)

    @staticmethod
    def _release(state: _Stream) -> None:
        if not state.waiting:
            return
        still = []
        for version, future in state.waiting:
            if version <= state.confirmed:
                if not future.done():
                    future.set_result(None)
            else:
                still.append((version, future))
        state.waiting = still

    async def flush(self) -> None:
        """Write the cursors of what was confirmed since last time (coalesced: at most one
        write per aggregate per round, however many appends it had)."""
        dirty, self._dirty = self._dirty, {}
        gate = asyncio.Semaphore(CATCH_UP_CONCURRENCY)
        failed: list[StorageUnavailable] = []

        async def write(aggregate_id: str, version: int) -> None:
            async with gate:
                try:
                    await self._outbox.mark_published(aggregate_id, version)
                except StorageUnavailable as exc:
                    # Next time, then (the cursor is an optimisation: never needed for safety).
                    self._dirty[aggregate_id] = max(self._dirty.get(aggregate_id, 0), version)
                    failed.append(exc)

        await asyncio.gather(*(write(a, v) for a, v in dirty.items()))
        if failed:
            raise failed[0]
