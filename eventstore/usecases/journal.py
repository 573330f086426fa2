"""A server process's publication journal: appends announced before they commit, many per write.

Every append names its aggregate here before its Paxos round, and waits until that is durable.
Announcements that arrive while a write is in flight share the next write (group commit), so
under load the journal costs a fraction of a write per append, and nothing more per append is
ever written for publication: no marker to delete, no queue table filling with tombstones.

Each write is an *entry* with a sequence number. An entry is *settled* once every append it
announced is either published (Kafka confirmed it) or known not to have committed. The writer
records, with its heartbeat, the highest seq up to which everything is settled; a writer whose
heartbeat stops is presumed dead and another replica publishes what its unsettled entries name.
An entry can also be *orphaned* here: an announced append whose publication this process lost
track of (its outcome unknown, the producer refused it, a delivery failed). The relay catches up
the aggregates of orphaned entries (usecases/publish.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

import structlog

from eventstore.domain.errors import StorageUnavailable
from eventstore.ports import AggregateCatalog, PublicationLog

log = structlog.get_logger(__name__)


@dataclass
class _Batch:
    aggregates: list[str] = field(default_factory=list)
    #: (aggregate_type, aggregate_id) of appends that create their aggregate: for the catalog
    created: list[tuple[str, str]] = field(default_factory=list)
    done: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass
class _Entry:
    #: announced appends not settled yet
    open: int
    orphaned: bool = False


class WriterJournal:
    def __init__(
        self,
        log_: PublicationLog,
        catalog: AggregateCatalog | None = None,
        writer: UUID | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._log = log_
        self._catalog = catalog
        self.writer = writer or uuid.uuid4()
        self._clock = clock
        self._seq = 0
        self._batch: _Batch | None = None
        self._flusher: asyncio.Task[None] | None = None
        #: entries not settled yet, in seq order (dicts keep insertion order)
        self._entries: dict[int, _Entry] = {}
        self._forgotten = 0
        #: writes (group commits) and announcements, for the benchmark and tests
        self.writes = 0
        self.announced = 0

    # --- group commit ------------------------------------------------------------------

    async def announce(self, aggregate_id: str, creates_type: str | None = None) -> int:
        """Durably note that `aggregate_id` may get committed events; returns the entry's seq.

        The caller must then call exactly one of `settled(seq)` (published, or not committed)
        or `orphaned(seq)` (committed or maybe committed, and not being published).
        """
        batch = self._batch
        if batch is None:
            batch = self._batch = _Batch()
        batch.aggregates.append(aggregate_id)
        if creates_type is not None:
            batch.created.append((creates_type, aggregate_id))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop())
        try:
            return await asyncio.shield(batch.done)
        except asyncio.CancelledError:
            # The caller went away (its RPC was cancelled) before appending: once the entry
            # is written, settle its share of it, or the entry would stay open for ever.
            batch.done.add_done_callback(self._settle_abandoned)
            raise

    def _settle_abandoned(self, done: asyncio.Future[int]) -> None:
        if not done.cancelled() and done.exception() is None:
            self.settled(done.result())

    async def _flush_loop(self) -> None:
        # One write in flight at a time: announcements made meanwhile share the next one.
        while self._batch is not None:
            batch, self._batch = self._batch, None
            self._seq += 1
            seq = self._seq
            self._entries[seq] = _Entry(open=len(batch.aggregates))
            try:
                await self._write(seq, batch)
            except StorageUnavailable as exc:
                # Nothing it announced will be appended (every caller gets the error).
                del self._entries[seq]
                batch.done.set_exception(exc)
                batch.done.exception()  # retrieved: abandoned callers must not warn
            except BaseException as exc:  # pragma: no cover - a bug; fail the callers, not us
                del self._entries[seq]
                batch.done.set_exception(StorageUnavailable(f"journal write failed: {exc!r}"))
                batch.done.exception()
                raise
            else:
                self.writes += 1
                self.announced += len(batch.aggregates)
                batch.done.set_result(seq)

    async def _write(self, seq: int, batch: _Batch) -> None:
        writes = [self._log.record(self.writer, seq, batch.aggregates)]
        if batch.created and self._catalog is not None:
            writes.append(self._catalog.add(batch.created, self._clock()))
        await asyncio.gather(*writes)

    # --- settlement --------------------------------------------------------------------

    def settled(self, seq: int) -> None:
        """One append of entry `seq` is published, or known not to have committed."""
        entry = self._entries.get(seq)
        if entry is None:
            return
        entry.open -= 1
        if entry.open <= 0 and not entry.orphaned:
            del self._entries[seq]

    def orphaned(self, seq: int) -> None:
        """An append of entry `seq` may be committed and is not being published: the relay
        must catch up the entry's aggregates."""
        entry = self._entries.get(seq)
        if entry is not None:
            entry.orphaned = True

    def replayed(self, seq: int) -> None:
        """The relay published everything entry `seq` names: it is settled as a whole."""
        self._entries.pop(seq, None)

    def orphans(self) -> list[int]:
        return [seq for seq, entry in self._entries.items() if entry.orphaned]

    @property
    def settled_through(self) -> int:
        """Every entry up to this seq is settled."""
        for seq in self._entries:
            return seq - 1
        return self._seq

    @property
    def open_entries(self) -> int:
        return len(self._entries)

    # --- liveness ----------------------------------------------------------------------

    async def beat(self) -> None:
        """Tell the other replicas this writer is alive and how far it is settled; free the
        storage of entries settled since the last beat."""
        settled = self.settled_through
        await self._log.heartbeat(self.writer, settled, self._clock())
        if settled > self._forgotten:
            with contextlib.suppress(StorageUnavailable):
                await self._log.forget(self.writer, self._forgotten, settled)
                self._forgotten = settled

    async def retire(self) -> bool:
        """At a clean shutdown: if everything is settled, remove this writer and its journal,
        so that no replica needs to look at it again; else beat once more (a replica will take
        over what is left). Whether it was retired."""
        if self._entries or self._batch is not None:
            await self.beat()
            return False
        await self._log.forget(self.writer, self._forgotten, self._seq, retire=True)
        return True

    async def close(self) -> None:
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
