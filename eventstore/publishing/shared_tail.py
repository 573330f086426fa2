"""One tail of the log shared by every live subscription, instead of a consumer each.

A reader starts on a reader of its own from the inner log (a Kafka consumer: history, a
checkpoint, or the end). Once that has reached where the log ended when it opened, the reader
joins the shared tail: one reader of every topic, started with the first member and closed
some time after the last one leaves, that hands each record it reads to the members that want
its type. From joining, the tail keeps what it reads for the reader in a bounded queue, while
the reader goes on with its own reader until it has passed, on every partition it wants, the
point where the tail was when it joined; then it closes its own reader and reads the queue.
Positions per partition make the hand-over exact: a record below the reader's position was
delivered already and is dropped, and a record above it (a hole) sends the reader back to a
reader of its own from its position, as does a queue that fills up (a slow subscriber), so
the tail never waits for anyone. An idle live subscription costs a queue and a waiting task.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Mapping

import structlog

from eventstore.ports import EventLog, LogReader, LogRecord, LogStart

log = structlog.get_logger(__name__)

Where = tuple[str, int]

TAIL_BATCH = 500
#: What a live reader's queue may hold (event bytes, plus a per-record allowance) before the
#: reader is sent back to a reader of its own: about what one Kafka consumer fetches ahead.
QUEUE_BYTES = 1024 * 1024
_RECORD_OVERHEAD_BYTES = 256
#: How long a live reader with nothing queued waits before `read` returns [] (the caller
#: checks for heartbeats and reports lag between reads).
IDLE_WAIT_S = 1.0
#: How long the tail stays open without members (subscribers that reconnect find it open).
LINGER_S = 30.0
#: How soon a tail that failed to open is tried again.
TAIL_RETRY_S = 5.0


def _size(record: LogRecord) -> int:
    return len(record.event.data) + _RECORD_OVERHEAD_BYTES


class SharedTailLog(EventLog):
    def __init__(
        self,
        inner: EventLog,
        queue_bytes: int = QUEUE_BYTES,
        idle_wait_s: float = IDLE_WAIT_S,
        linger_s: float = LINGER_S,
    ) -> None:
        self._inner = inner
        self._queue_bytes = queue_bytes
        self.idle_wait_s = idle_wait_s
        self._linger_s = linger_s
        self._next_open = 0.0
        self._members: set[SharedTailReader] = set()
        self._tail: LogReader | None = None
        self._task: asyncio.Task[None] | None = None
        #: the next offset the tail hands out, per partition it reads
        self._positions: dict[Where, int] = {}

    async def open(
        self,
        aggregate_types: frozenset[str],
        start: LogStart,
        key: str | None = None,
    ) -> LogReader:
        own = await self._inner.open(aggregate_types, start, key)
        return SharedTailReader(self, own, aggregate_types, key)

    @property
    def members(self) -> int:
        return len(self._members)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # --- used by the readers ---------------------------------------------------------------

    def join(self, reader: SharedTailReader) -> dict[Where, int] | None:
        """Where the tail is now: from here on it queues the reader's records. None while
        the tail is not open (it is opened in the background)."""
        if (self._task is None or self._task.done()) and time.monotonic() >= self._next_open:
            self._task = asyncio.create_task(self._run(), name="subscription tail")
        if self._tail is None:
            return None
        self._members.add(reader)
        return {where: offset for where, offset in self._positions.items() if reader.wants(where)}

    def leave(self, reader: SharedTailReader) -> None:
        self._members.discard(reader)

    async def own_reader(
        self, aggregate_types: frozenset[str], start: Mapping[Where, int], key: str | None
    ) -> LogReader:
        return await self._inner.open(aggregate_types, start, key)

    # --- the tail --------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            self._tail = await self._inner.open(frozenset(), "end")
        except Exception as exc:  # noqa: BLE001 - readers keep their own until a later try
            log.warning("subscription tail did not open; readers keep their own", error=str(exc))
            self._next_open = time.monotonic() + TAIL_RETRY_S
            return
        tail = self._tail
        self._positions = tail.start_positions()
        idle_since = time.monotonic()
        try:
            while self._members or time.monotonic() - idle_since < self._linger_s:
                records = await tail.read(TAIL_BATCH)
                self._hand_out(records)
                if self._members:
                    idle_since = time.monotonic()
        except Exception:
            log.exception("subscription tail failed; its readers go back to their own")
        finally:
            self._tail = None
            for member in list(self._members):
                member.overflow()
            self._members.clear()
            self._positions = {}
            await tail.close()

    def _hand_out(self, records: list[LogRecord]) -> None:
        by_type: dict[str, list[LogRecord]] = {}
        for record in records:
            self._positions[(record.aggregate_type, record.partition)] = record.offset + 1
            by_type.setdefault(record.aggregate_type, []).append(record)
        if not by_type:
            return
        for member in list(self._members):
            wanted = [
                record
                for aggregate_type, batch in by_type.items()
                if member.wants_type(aggregate_type)
                for record in batch
            ]
            if wanted and not member.offer(wanted, self._queue_bytes):
                self._members.discard(member)


class SharedTailReader(LogReader):
    """Reads its own reader until it can join the shared tail, then the tail's queue."""

    def __init__(
        self,
        shared: SharedTailLog,
        own: LogReader,
        aggregate_types: frozenset[str],
        key: str | None,
    ) -> None:
        self._shared = shared
        self._own: LogReader | None = own
        #: the reader this one opened with: the log's end then (it answers after closing too)
        self._first = own
        self._types = aggregate_types
        self._key = key
        self._start = own.start_positions()
        self._positions = dict(self._start)
        #: a keyed reader reads one partition: the one its own reader was given (once known)
        self._partitions = set(self._start) if key is not None else None
        #: where the tail was when this reader joined it (None: not joined)
        self._joined_at: dict[Where, int] | None = None
        self._queue: deque[LogRecord] = deque()
        self._queued_bytes = 0
        self._overflowed = False
        self._arrived = asyncio.Event()

    # --- called by the tail ----------------------------------------------------------------

    def wants_type(self, aggregate_type: str) -> bool:
        return not self._types or aggregate_type in self._types

    def wants(self, where: Where) -> bool:
        if self._partitions is not None:
            return where in self._partitions
        return self.wants_type(where[0])

    def offer(self, records: list[LogRecord], limit: int) -> bool:
        """Queue what the tail read; False (and the reader goes back to its own) when the
        queue is full."""
        if self._partitions is not None:
            records = [r for r in records if (r.aggregate_type, r.partition) in self._partitions]
        for record in records:
            if self._queue and self._queued_bytes >= limit:
                self.overflow()
                return False
            self._queue.append(record)
            self._queued_bytes += _size(record)
        if records:
            self._arrived.set()
        return True

    def overflow(self) -> None:
        self._overflowed = True
        self._arrived.set()

    # --- LogReader -------------------------------------------------------------------------

    def start_positions(self) -> dict[Where, int]:
        return dict(self._start)

    def caught_up(self, positions: Mapping[Where, int]) -> bool:
        return self._first.caught_up(positions)

    def lag(self, positions: Mapping[Where, int]) -> int:
        return self._own.lag(positions) if self._own is not None else len(self._queue)

    async def read(self, max_records: int) -> list[LogRecord]:
        if self._own is not None:
            return await self._read_own(max_records)
        if not self._queue:
            if self._overflowed:
                await self._fall_back()
                return []
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), self._shared.idle_wait_s)
        return await self._read_queue(max_records)

    async def close(self) -> None:
        self._shared.leave(self)
        if self._own is not None:
            own, self._own = self._own, None
            await own.close()

    # --- the two sources -------------------------------------------------------------------

    async def _read_own(self, max_records: int) -> list[LogRecord]:
        assert self._own is not None
        records = await self._own.read(max_records)
        if self._partitions is not None:
            # A keyed reader opened before its type's topic existed learns its partition when
            # its own reader is assigned it (not from a record: its key's partition may hold
            # none), or it would never join the tail and keep a consumer for good.
            for where, offset in self._own.start_positions().items():
                if where not in self._partitions:
                    self._partitions.add(where)
                    self._positions.setdefault(where, offset)
        for record in records:
            where = (record.aggregate_type, record.partition)
            self._positions[where] = record.offset + 1
            if self._partitions is not None:
                self._partitions.add(where)
        if self._overflowed:  # the queue filled while we were still catching up
            self._shared.leave(self)
            self._reset_queue()
            self._joined_at = None
        if (
            self._joined_at is None
            and (self._partitions is None or self._partitions)
            and self._own.caught_up(self._positions)
        ):
            self._joined_at = self._shared.join(self)
        if self._joined_at is not None and all(
            self._positions.get(where, 0) >= offset for where, offset in self._joined_at.items()
        ):
            # The queue holds everything from where the tail was on: our own reader is done.
            own, self._own = self._own, None
            await own.close()
        return records

    async def _read_queue(self, max_records: int) -> list[LogRecord]:
        records: list[LogRecord] = []
        while self._queue and len(records) < max_records:
            record = self._queue.popleft()
            self._queued_bytes -= _size(record)
            where = (record.aggregate_type, record.partition)
            expected = self._positions.get(where, 0)
            if record.offset < expected:
                continue  # delivered already (by our own reader, before the hand-over)
            if record.offset > expected:
                log.warning(
                    "hole in the shared tail; reading on our own",
                    aggregate_type=where[0],
                    partition=where[1],
                    expected=expected,
                    got=record.offset,
                )
                self._shared.leave(self)
                self.overflow()
                self._reset_queue()
                break
            self._positions[where] = record.offset + 1
            records.append(record)
        return records

    async def _fall_back(self) -> None:
        """Back to a reader of our own, from exactly where we are."""
        self._shared.leave(self)
        self._reset_queue()
        self._joined_at = None
        self._own = await self._shared.own_reader(self._types, dict(self._positions), self._key)

    def _reset_queue(self) -> None:
        self._queue.clear()
        self._queued_bytes = 0
        self._overflowed = False
