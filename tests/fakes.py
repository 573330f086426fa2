"""Test doubles held to the same contracts as the real adapters (tests/contract)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime

import grpc

from eventstore.config import ServerSettings
from eventstore.domain.events import RecordedEvent
from eventstore.domain.personal import SUBJECT_KEY
from eventstore.domain.queries import Cursor, EventQuery, IndexProgress, SearchPage
from eventstore.ports import (
    Delivery,
    EventIndex,
    EventLog,
    EventPublisher,
    LogReader,
    LogRecord,
    LogStart,
    PublisherUnavailable,
    PublishFailed,
)
from eventstore.server import Components, start
from eventstore.storage.memory import InMemoryEventStorage, InMemorySnapshotStore
from eventstore.wire.records import murmur2_partition

#: How long an idle log read waits, like the Kafka reader's short sleep: the subscription loop
#: awaits something even when nothing arrives.
IDLE_WAIT_S = 0.005


class _Done(Delivery):
    def __init__(self, error: str | None, delay_s: float) -> None:
        self._error = error
        self._delay = delay_s

    async def wait(self) -> None:
        await asyncio.sleep(self._delay)
        if self._error:
            raise PublishFailed(self._error)


class RecordingPublisher(EventPublisher):
    """Keeps what was handed over, in order; can be told to fail the next sends."""

    def __init__(self) -> None:
        self.records: list[RecordedEvent] = []
        self.fail_next = 0
        self.delay_s = 0.0
        #: aggregates whose records always fail delivery
        self.refused: set[str] = set()
        #: every send raises PublisherUnavailable (Kafka as a whole unreachable)
        self.unavailable = False

    async def send(self, events: Sequence[RecordedEvent]) -> Delivery:
        if self.unavailable:
            raise PublisherUnavailable("injected: the producer takes nothing")
        if events and events[0].aggregate_id in self.refused:
            # A failure of this aggregate's own (e.g. a record its topic refuses).
            return _Done(f"injected refusal of {events[0].aggregate_id}", self.delay_s)
        if self.fail_next:
            self.fail_next -= 1
            return _Done("injected delivery failure", self.delay_s)
        self.records.extend(events)
        return _Done(None, self.delay_s)


Position = tuple[str, int]


class InMemoryEventLog(EventLog, EventPublisher):
    """The published log in memory, held to tests/contract/log.py like Kafka: a topic per
    aggregate type (created by its first record), records keyed by aggregate id to one of
    `partitions` partitions, every copy kept (publication is at least once)."""

    def __init__(self, partitions: int = 3) -> None:
        self.partitions = partitions
        #: aggregate type -> one list of events per partition (the offset is the index)
        self.topics: dict[str, list[list[RecordedEvent]]] = {}
        self.readers: list[InMemoryLogReader] = []

    def partition_of(self, aggregate_id: str) -> int:
        return murmur2_partition(aggregate_id.encode(), self.partitions)

    async def send(self, events: Sequence[RecordedEvent]) -> Delivery:
        for event in events:
            topic = self.topics.setdefault(
                event.aggregate_type, [[] for _ in range(self.partitions)]
            )
            topic[self.partition_of(event.aggregate_id)].append(event)
        return _Done(None, 0.0)

    def end(self, where: Position) -> int:
        aggregate_type, partition = where
        return len(self.topics[aggregate_type][partition]) if aggregate_type in self.topics else 0

    async def open(
        self,
        aggregate_types: frozenset[str],
        start: LogStart,
        key: str | None = None,
    ) -> LogReader:
        reader = InMemoryLogReader(self, aggregate_types, start, key)
        self.readers.append(reader)
        return reader


class InMemoryLogReader(LogReader):
    def __init__(
        self,
        log: InMemoryEventLog,
        aggregate_types: frozenset[str],
        start: LogStart,
        key: str | None,
    ) -> None:
        self._log = log
        self._types = aggregate_types
        self._start = start
        self._key = key
        self._assigned: dict[Position, int] = {}
        self._next: dict[Position, int] = {}
        self.closed = False
        self._end_at_open = self._assign_new(initial=True)

    def _assign_new(self, initial: bool) -> dict[Position, int]:
        ends = {}
        for aggregate_type in self._log.topics:
            if self._types and aggregate_type not in self._types:
                continue
            partitions = range(self._log.partitions)
            if self._key is not None:
                partitions = range(p := self._log.partition_of(self._key), p + 1)
            for partition in partitions:
                where = (aggregate_type, partition)
                if where in self._assigned:
                    continue
                ends[where] = self._log.end(where)
                if self._start == "end" and initial:
                    offset = ends[where]
                elif isinstance(self._start, Mapping):
                    offset = self._start.get(where, 0)
                elif isinstance(self._start, datetime) and initial:
                    # As Kafka's offsets for a time: the first record at or after it, else the end.
                    records = self._log.topics[aggregate_type][partition]
                    offset = next(
                        (i for i, e in enumerate(records) if e.recorded_at >= self._start),
                        ends[where],
                    )
                else:
                    offset = 0  # beginning, or a topic created after the reader opened
                self._assigned[where] = self._next[where] = offset
        return ends

    async def read(self, max_records: int) -> list[LogRecord]:
        assert not self.closed, "read after close"
        self._assign_new(initial=False)
        records: list[LogRecord] = []
        for where, offset in self._next.items():
            aggregate_type, partition = where
            events = self._log.topics[aggregate_type][partition]
            for event in events[offset : offset + max_records - len(records)]:
                records.append(LogRecord(event, aggregate_type, partition, offset))
                offset += 1
            self._next[where] = offset
        if not records:
            await asyncio.sleep(IDLE_WAIT_S)
        return records

    def start_positions(self) -> dict[Position, int]:
        return dict(self._assigned)

    def caught_up(self, positions: Mapping[Position, int]) -> bool:
        return all(positions.get(where, 0) >= end for where, end in self._end_at_open.items())

    def lag(self, positions: Mapping[Position, int]) -> int:
        return sum(
            max(self._log.end(where) - positions.get(where, start), 0)
            for where, start in self._assigned.items()
        )

    async def close(self) -> None:
        self.closed = True


def _sort_key(event: RecordedEvent) -> Cursor:
    return (_millis(event.recorded_at), event.aggregate_id, event.version)


class InMemoryEventIndex(EventIndex):
    """The search index in memory, held to tests/contract/index.py like OpenSearch: one
    document per stored event (aggregate id, version), searched in (recorded_at ms,
    aggregate_id, version) order. No indexer reports its progress to it, so its progress is
    unknown."""

    def __init__(self) -> None:
        self.documents: dict[tuple[str, int], RecordedEvent] = {}

    def add(self, events: Sequence[RecordedEvent]) -> None:
        """What the indexer does: a re-delivered event replaces its own document."""
        for event in events:
            self.documents[(event.aggregate_id, event.version)] = event

    async def search(self, query: EventQuery) -> SearchPage:
        start = _millis(query.start) if query.start else None
        end = _millis(query.end) if query.end else None
        matches = sorted(
            (
                event
                for event in self.documents.values()
                if (not query.event_types or event.event_type in query.event_types)
                and (not query.aggregate_types or event.aggregate_type in query.aggregate_types)
                and (query.permitted_types is None or event.aggregate_type in query.permitted_types)
                and (not query.aggregate_id or event.aggregate_id == query.aggregate_id)
                and (start is None or _sort_key(event)[0] >= start)
                and (end is None or _sort_key(event)[0] < end)
            ),
            key=_sort_key,
        )
        after = query.after
        page = [e for e in matches if after is None or _sort_key(e) > after][: query.page_size]
        cursor = _sort_key(page[-1]) if len(page) == query.page_size else None
        visible = any(
            event.event_id == query.visible_event_id
            and (query.permitted_types is None or event.aggregate_type in query.permitted_types)
            for event in self.documents.values()
        )
        return SearchPage(
            events=page,
            cursor=cursor,
            total=len(matches) if query.count_total else None,
            visible=visible,
        )

    async def progress(self, permitted_types: frozenset[str] | None = None) -> IndexProgress:
        return IndexProgress()

    async def erase_subject(self, subject: str) -> int:
        about = [k for k, e in self.documents.items() if e.metadata.get(SUBJECT_KEY) == subject]
        for k in about:
            del self.documents[k]
        return len(about)


def _millis(value: datetime) -> int:
    return int(value.timestamp() * 1000)


@contextlib.asynccontextmanager
async def in_memory_server() -> AsyncIterator[grpc.aio.Channel]:
    """A channel to an in-process server (authentication off) over the in-memory fakes."""
    running = await start(
        ServerSettings(listen="127.0.0.1:0", auth_disabled=True),
        Components(
            InMemoryEventStorage(),
            log=InMemoryEventLog(),
            index=InMemoryEventIndex(),
            snapshots=InMemorySnapshotStore(),
        ),
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield channel
    finally:
        await running.stop(grace=0)
