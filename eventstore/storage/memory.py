"""An in-memory EventStorage for fast unit tests. The same contract suite runs against it and
the Cassandra adapter (tests/contract), so it cannot drift from the real store."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from uuid import UUID

from eventstore.domain.events import AggregateInfo, Direction, NewEvent, RecordedEvent
from eventstore.domain.personal import WrappedKey
from eventstore.domain.schemas import SchemaVersion
from eventstore.domain.snapshots import Snapshot
from eventstore.ports import (
    AggregateCatalog,
    AppendOutcome,
    Committed,
    EventStorage,
    ExistingEvent,
    ParkedAggregate,
    PublicationLog,
    Rejected,
    SchemaRegistry,
    SnapshotStore,
    StreamState,
    SubjectKeys,
    WriterState,
)


@dataclass
class _Stream:
    aggregate_type: str
    events: list[RecordedEvent] = field(default_factory=list)
    ids: dict[UUID, ExistingEvent] = field(default_factory=dict)


class InMemoryEventStorage(EventStorage):
    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}
        self._lock = asyncio.Lock()

    async def stream_state(self, aggregate_id: str) -> StreamState:
        stream = self._streams.get(aggregate_id)
        if stream is None:
            return StreamState(0, None)
        return StreamState(len(stream.events), stream.aggregate_type)

    async def append(
        self,
        aggregate_id: str,
        aggregate_type: str,
        expected_version: int,
        events: Sequence[NewEvent],
        recorded_at: datetime,
    ) -> AppendOutcome:
        async with self._lock:
            stream = self._streams.get(aggregate_id)
            head = len(stream.events) if stream else 0
            existing = {
                e.event_id: stream.ids[e.event_id]
                for e in events
                if stream and e.event_id in stream.ids
            }
            type_ok = stream is None or stream.aggregate_type == aggregate_type
            if head != expected_version or existing or not type_ok:
                return Rejected(head, stream.aggregate_type if stream else None, existing)
            if stream is None:
                stream = self._streams[aggregate_id] = _Stream(aggregate_type)
            for event in events:
                version = len(stream.events) + 1
                stream.events.append(
                    RecordedEvent(
                        event_id=event.event_id,
                        aggregate_id=aggregate_id,
                        aggregate_type=aggregate_type,
                        version=version,
                        event_type=event.event_type,
                        data=event.data,
                        content_type=event.content_type,
                        metadata=dict(event.metadata),
                        recorded_at=recorded_at,
                    )
                )
                stream.ids[event.event_id] = ExistingEvent(version, recorded_at)
            return Committed(expected_version + 1, len(stream.events), recorded_at)

    async def read(
        self, aggregate_id: str, start: int | None, direction: Direction, limit: int
    ) -> list[RecordedEvent]:
        stream = self._streams.get(aggregate_id)
        if stream is None:
            return []
        if direction is Direction.FORWARDS:
            first = max(start or 1, 1)
            return stream.events[first - 1 : first - 1 + limit]
        top = len(stream.events) if start is None else min(start, len(stream.events))
        return list(reversed(stream.events[max(top - limit, 0) : top]))

    async def describe(self, aggregate_id: str) -> AggregateInfo | None:
        stream = self._streams.get(aggregate_id)
        if stream is None or not stream.events:
            return None
        return AggregateInfo(
            aggregate_id=aggregate_id,
            aggregate_type=stream.aggregate_type,
            version=len(stream.events),
            first_recorded_at=stream.events[0].recorded_at,
            last_recorded_at=stream.events[-1].recorded_at,
        )


class InMemoryPublicationLog(PublicationLog):
    """Publication bookkeeping in memory, held to tests/contract/outbox.py like the real one."""

    def __init__(self) -> None:
        self.journal: dict[UUID, dict[int, list[str]]] = {}
        self.heartbeats: dict[UUID, tuple[datetime, int]] = {}
        self.cursors: dict[str, int] = {}
        self.parked_aggregates: dict[str, ParkedAggregate] = {}

    async def record(self, writer: UUID, seq: int, aggregate_ids: Sequence[str]) -> None:
        self.journal.setdefault(writer, {})[seq] = list(aggregate_ids)

    async def entries(self, writer: UUID, after: int, limit: int) -> list[tuple[int, list[str]]]:
        entries = self.journal.get(writer, {})
        return [(seq, list(entries[seq])) for seq in sorted(entries) if seq > after][:limit]

    async def heartbeat(self, writer: UUID, resolved: int, at: datetime) -> None:
        self.heartbeats[writer] = (at, resolved)

    async def settle(self, writer: UUID, resolved: int) -> None:
        if writer in self.heartbeats:
            self.heartbeats[writer] = (self.heartbeats[writer][0], resolved)

    async def writers(self) -> list[WriterState]:
        return [WriterState(w, at, resolved) for w, (at, resolved) in self.heartbeats.items()]

    async def forget(self, writer: UUID, after: int, through: int, retire: bool = False) -> None:
        entries = self.journal.get(writer, {})
        for seq in [s for s in entries if s <= through]:
            del entries[seq]
        if retire:
            self.journal.pop(writer, None)
            self.heartbeats.pop(writer, None)

    async def published_through(self, aggregate_id: str) -> int:
        return self.cursors.get(aggregate_id, 0)

    async def mark_published(self, aggregate_id: str, through_version: int) -> None:
        self.cursors[aggregate_id] = max(self.cursors.get(aggregate_id, 0), through_version)

    async def park(self, parked: ParkedAggregate) -> None:
        self.parked_aggregates[parked.aggregate_id] = parked

    async def unpark(self, aggregate_id: str) -> None:
        self.parked_aggregates.pop(aggregate_id, None)

    async def parked(self) -> list[ParkedAggregate]:
        return list(self.parked_aggregates.values())


class InMemoryAggregateCatalog(AggregateCatalog):
    """The catalog in memory, held to tests/contract/catalog.py like the real one."""

    def __init__(self) -> None:
        self.by_topic: dict[str, tuple[str, date]] = {}
        self.by_day: dict[tuple[str, date], set[str]] = {}

    async def register_type(self, aggregate_type: str, at: datetime) -> str | None:
        key = aggregate_type.replace(".", "_")
        existing = self.by_topic.setdefault(key, (aggregate_type, at.astimezone(UTC).date()))
        return None if existing[0] == aggregate_type else existing[0]

    async def add(self, entries: Sequence[tuple[str, str]], at: datetime) -> None:
        day = at.astimezone(UTC).date()
        for aggregate_type, aggregate_id in entries:
            self.by_day.setdefault((aggregate_type, day), set()).add(aggregate_id)

    async def types(self) -> dict[str, date]:
        return dict(self.by_topic.values())

    async def aggregates(self, aggregate_type: str, day: date) -> list[str]:
        return sorted(self.by_day.get((aggregate_type, day), ()))


class InMemorySnapshotStore(SnapshotStore):
    """Snapshots in memory, held to tests/contract/snapshots.py like the real store."""

    def __init__(self) -> None:
        self._snapshots: dict[str, dict[int, Snapshot]] = {}

    async def save(self, snapshot: Snapshot) -> None:
        self._snapshots.setdefault(snapshot.aggregate_id, {})[snapshot.version] = snapshot

    async def latest(self, aggregate_id: str, max_version: int | None) -> Snapshot | None:
        versions = [
            v
            for v in self._snapshots.get(aggregate_id, {})
            if max_version is None or v <= max_version
        ]
        return self._snapshots[aggregate_id][max(versions)] if versions else None

    async def delete(self, aggregate_id: str) -> int:
        return len(self._snapshots.pop(aggregate_id, {}))


class InMemorySubjectKeys(SubjectKeys):
    """Subject keys in memory, held to tests/contract/subject_keys.py like the real store."""

    def __init__(self) -> None:
        self._keys: dict[str, WrappedKey] = {}
        self._aggregates: dict[str, set[str]] = {}

    async def create(self, key: WrappedKey) -> WrappedKey:
        return self._keys.setdefault(key.subject, key)

    async def fetch(self, subject: str) -> WrappedKey | None:
        return self._keys.get(subject)

    async def destroy(self, subject: str, at: datetime) -> WrappedKey:
        existing = self._keys.get(subject)
        if existing is None:
            existing = WrappedKey(subject, UUID(int=0), None, None, at, at)
        elif existing.erased_at is None:
            existing = replace(existing, master_key_id=None, wrapped=None, erased_at=at)
        self._keys[subject] = existing
        return existing

    async def rewrap(self, old: WrappedKey, new: WrappedKey) -> bool:
        stored = self._keys.get(old.subject)
        if (
            stored is None
            or stored.erased_at is not None
            or (stored.key_id, stored.master_key_id) != (old.key_id, old.master_key_id)
        ):
            return False
        self._keys[old.subject] = replace(
            stored, wrapped=new.wrapped, master_key_id=new.master_key_id
        )
        return True

    async def keys(self) -> list[WrappedKey]:
        return list(self._keys.values())

    async def add_aggregate(self, subject: str, aggregate_id: str) -> None:
        self._aggregates.setdefault(subject, set()).add(aggregate_id)

    async def aggregates(self, subject: str) -> list[str]:
        return sorted(self._aggregates.get(subject, ()))

    async def subjects(self, aggregate_id: str) -> list[str]:
        return sorted(s for s, aggregates in self._aggregates.items() if aggregate_id in aggregates)


class InMemorySchemaRegistry(SchemaRegistry):
    """Schemas in memory, held to tests/contract/schemas.py like the Cassandra registry."""

    def __init__(self) -> None:
        self._versions: dict[tuple[str, str], dict[int, SchemaVersion]] = {}

    async def add(self, schema: SchemaVersion) -> bool:
        versions = self._versions.setdefault((schema.aggregate_type, schema.event_type), {})
        if schema.version in versions:
            return False
        versions[schema.version] = schema
        return True

    async def versions(self, aggregate_type: str, event_type: str) -> list[SchemaVersion]:
        versions = self._versions.get((aggregate_type, event_type), {})
        return [versions[v] for v in sorted(versions)]

    async def event_types(self, aggregate_type: str) -> list[str]:
        return sorted(e for (a, e), versions in self._versions.items() if a == aggregate_type)
