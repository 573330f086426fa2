"""The interfaces adapters implement. Use cases depend on these, never on a driver."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Protocol
from uuid import UUID

from eventstore.domain.events import AggregateInfo, Direction, NewEvent, RecordedEvent
from eventstore.domain.groups import Commit, GroupRecord, ParkedEvent, Where
from eventstore.domain.personal import WrappedKey
from eventstore.domain.queries import EventQuery, IndexProgress, SearchPage
from eventstore.domain.schemas import SchemaVersion
from eventstore.domain.snapshots import Snapshot


@dataclass(frozen=True, slots=True)
class StreamState:
    version: int
    #: None while the aggregate has no events
    aggregate_type: str | None


@dataclass(frozen=True, slots=True)
class Committed:
    first_version: int
    last_version: int
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class ExistingEvent:
    version: int
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class Rejected:
    """The append's condition did not hold; nothing of it was written."""

    actual_version: int
    actual_type: str | None
    #: Those of the append's event ids that the aggregate already holds.
    existing: Mapping[UUID, ExistingEvent] = field(default_factory=dict)


AppendOutcome = Committed | Rejected


class EventStorage(ABC):
    """Per-aggregate event streams with compare-and-set appends.

    Errors: adapters raise only eventstore.domain.errors types (StorageUnavailable for any
    backend failure); driver exceptions never cross this boundary.
    """

    @abstractmethod
    async def stream_state(self, aggregate_id: str) -> StreamState:
        """The aggregate's current version (0 when it has no events) and type."""

    async def settled_state(self, aggregate_id: str) -> StreamState:
        """`stream_state` once any conditional append in flight on the aggregate is settled for
        good. Recovery paths use it: a plain read can miss an append that a quorum accepted but
        nobody committed yet (its writer timed out or died), which a later conditional write or
        SERIAL read then commits, after whoever read the head had decided there was nothing
        more. Adapters whose reads cannot miss one need not override it."""
        return await self.stream_state(aggregate_id)

    @abstractmethod
    async def append(
        self,
        aggregate_id: str,
        aggregate_type: str,
        expected_version: int,
        events: Sequence[NewEvent],
        recorded_at: datetime,
    ) -> AppendOutcome:
        """Write `events` as versions expected_version+1, … in one atomic step.

        Applies only if the aggregate is at `expected_version` (and, when it has events, is of
        `aggregate_type`) and holds none of the event ids; otherwise writes nothing and
        returns what it found. An outcome the backend left unknown (a write timeout) is
        resolved before returning; if it cannot be, StorageUnavailable is raised.
        """

    @abstractmethod
    async def read(
        self, aggregate_id: str, start: int | None, direction: Direction, limit: int
    ) -> list[RecordedEvent]:
        """One page of events in `direction`, from version `start` (None: the current one,
        backwards only), at most `limit` of them."""

    @abstractmethod
    async def describe(self, aggregate_id: str) -> AggregateInfo | None:
        """Version, type and first/last recorded time; None when it has no events."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class PublishFailed(Exception):
    """The transport did not take or did not confirm a record; the relay will retry."""


class Delivery(ABC):
    """Awaitable confirmation of records already handed to the transport, in order."""

    @abstractmethod
    async def wait(self) -> None:
        """Return once every record is durably stored by the transport; else PublishFailed."""


class EventPublisher(ABC):
    """Fan-out of committed events (Kafka)."""

    @abstractmethod
    async def send(self, events: Sequence[RecordedEvent]) -> Delivery:
        """Hand `events` (one aggregate, ascending versions) to the transport, in this order,
        before returning; their confirmation comes through the returned Delivery."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Deliver what is queued (bounded by the transport's timeout) and release resources."""


class PublisherUnavailable(PublishFailed):
    """The transport takes nothing now (e.g. its queue is full while Kafka is unreachable).

    Not a fault of any one aggregate: retry later, and do not park the aggregate for it.
    """


@dataclass(frozen=True, slots=True)
class WriterState:
    """A server process's publication bookkeeping, as every replica sees it."""

    writer: UUID
    #: the last time the writer said it was alive
    heartbeat: datetime
    #: every journal entry with seq <= resolved is published (or was not committed)
    resolved: int


@dataclass(frozen=True, slots=True)
class ParkedAggregate:
    """An aggregate whose publication keeps failing; retried with its own backoff."""

    aggregate_id: str
    reason: str
    since: datetime
    attempts: int
    next_attempt_at: datetime


class PublicationLog(ABC):
    """Publication bookkeeping: what a crash may have left committed but unpublished.

    * The **journal**: before its commit, every append is announced in its writer's journal
      (the server process's), many appends to one write (group commit). Entries are numbered
      per writer; the writer's heartbeat says up to which entry everything is published. A
      writer that stops beating is taken over by another replica, which publishes what its
      journal names after that point.
    * **Cursors**: per aggregate, the highest version known published with all earlier ones
      (written coalesced, never per append).
    * **Parked** aggregates: those whose publication keeps failing, listed for operators.
    """

    @abstractmethod
    async def record(self, writer: UUID, seq: int, aggregate_ids: Sequence[str]) -> None:
        """Journal entry `seq` of `writer`: these aggregates may get committed events."""

    @abstractmethod
    async def entries(self, writer: UUID, after: int, limit: int) -> list[tuple[int, list[str]]]:
        """The writer's journal entries with seq > `after`, in order, at most `limit`."""

    @abstractmethod
    async def heartbeat(self, writer: UUID, resolved: int, at: datetime) -> None:
        """The writer is alive at `at`; its entries up to `resolved` are settled."""

    @abstractmethod
    async def settle(self, writer: UUID, resolved: int) -> None:
        """Another replica settled the (silent) writer's entries up to `resolved`."""

    @abstractmethod
    async def writers(self) -> list[WriterState]:
        """Every writer with a journal."""

    @abstractmethod
    async def forget(self, writer: UUID, after: int, through: int, retire: bool = False) -> None:
        """Free the storage of settled entries in (after, through]: the adapter may keep some
        (it frees whole groups). With `retire`, the writer is gone and fully settled: drop all
        of them and the writer too."""

    @abstractmethod
    async def published_through(self, aggregate_id: str) -> int:
        """The highest version known published, with every earlier one (0: none)."""

    @abstractmethod
    async def mark_published(self, aggregate_id: str, through_version: int) -> None:
        """Record that versions 1..through_version are published (never moves backwards)."""

    @abstractmethod
    async def park(self, parked: ParkedAggregate) -> None:
        """Record (or update) a failing aggregate."""

    @abstractmethod
    async def unpark(self, aggregate_id: str) -> None:
        """The aggregate is published again."""

    @abstractmethod
    async def parked(self) -> list[ParkedAggregate]:
        """Every parked aggregate."""


class AggregateCatalog(ABC):
    """Which aggregates exist, walkable by type and creation day (Cassandra cannot list its
    partitions cheaply). Written once per aggregate, before the append that creates it."""

    @abstractmethod
    async def register_type(self, aggregate_type: str, at: datetime) -> str | None:
        """Record the type (once per type, cluster-wide). Returns the existing type it
        collides with (its Kafka topic name would be the same), or None."""

    @abstractmethod
    async def add(self, entries: Sequence[tuple[str, str]], at: datetime) -> None:
        """(aggregate_type, aggregate_id) pairs created on `at`'s day (UTC)."""

    @abstractmethod
    async def types(self) -> dict[str, date]:
        """Every registered type, with the first day it was registered."""

    @abstractmethod
    async def aggregates(self, aggregate_type: str, day: date) -> list[str]:
        """The aggregates of the type created that day (an append that then failed may leave
        an id whose aggregate has no events: callers check)."""


@dataclass(frozen=True, slots=True)
class LogRecord:
    """An event read from the log (Kafka), with where it was."""

    event: RecordedEvent
    aggregate_type: str
    partition: int
    offset: int


class LogReader(ABC):
    @abstractmethod
    async def read(self, max_records: int) -> list[LogRecord]:
        """The next records, in log order per partition; [] when none arrived in a short wait."""

    @abstractmethod
    def start_positions(self) -> dict[tuple[str, int], int]:
        """Where each assigned partition started (the next offset to read)."""

    @abstractmethod
    def caught_up(self, positions: Mapping[tuple[str, int], int]) -> bool:
        """Whether `positions` reach the log's end as it was when the reader opened."""

    @abstractmethod
    def lag(self, positions: Mapping[tuple[str, int], int]) -> int:
        """Records between `positions` and the log's end (as last seen; cheap)."""

    @abstractmethod
    async def close(self) -> None: ...


#: Where a reader of the log starts: positions (absent partitions: from 0), "beginning", "end",
#: or a time (each partition's first record published with `recorded_at` at or after it).
LogStart = Mapping[tuple[str, int], int] | str | datetime


class EventLog(ABC):
    """The published event log (Kafka), read by subscriptions."""

    @abstractmethod
    async def open(
        self,
        aggregate_types: frozenset[str],
        start: LogStart,
        key: str | None = None,
    ) -> LogReader:
        """Read the topics of `aggregate_types` (empty: all, including ones created later) from
        `start` (a topic created after the reader opened: from 0). From a time, a partition
        without a record at or after it starts at its end. With `key`, only the partition
        that key maps to."""


class GroupListener(Protocol):
    """Told (during `GroupConsumer.read`) which partitions the group gives or takes."""

    def assigned(self, where: Where, commit: Commit) -> None:
        """Ours now, to read from `commit.offset`, skipping `commit.done_above`."""

    def revoked(self, where: Where) -> Commit | None:
        """Taken away: where to commit it before its next owner starts (None: nothing)."""

    def lost(self, where: Where) -> None:
        """Taken away without a chance to commit (our session expired)."""


class GroupConsumer(ABC):
    """One member of a consumer group over the event topics (and the group's own retry
    topic): Kafka shares the partitions among the members and keeps the committed positions."""

    @abstractmethod
    async def read(self, max_records: int) -> list[GroupRecord]:
        """The next records of the assigned partitions ([] after a short wait); assignment
        changes reach the listener from within this call."""

    @abstractmethod
    def commit(self, commits: Mapping[Where, Commit]) -> None:
        """Record these positions (in the background; `close` waits for its final ones)."""

    @abstractmethod
    def pause(self, wheres: Sequence[Where]) -> None:
        """Stop fetching these partitions until `resume`."""

    @abstractmethod
    def resume(self, wheres: Sequence[Where]) -> None: ...

    @abstractmethod
    async def close(self, final: Mapping[Where, Commit]) -> None:
        """Commit `final` and leave the group (its partitions go to the other members)."""


class GroupLog(ABC):
    """Consumer groups over the published log, their parked and replayed events."""

    @abstractmethod
    async def join(
        self,
        group_id: str,
        aggregate_types: frozenset[str],
        start: LogStart,
        listener: GroupListener,
    ) -> GroupConsumer:
        """Become a member of `group_id` reading the topics of `aggregate_types` (empty: all)
        and the group's retry topic; `start` places partitions the group never committed."""

    @abstractmethod
    async def park(self, group_id: str, record: GroupRecord, reason: str, attempts: int) -> None:
        """Keep `record` in the group's parked topic (returns once Kafka holds it)."""

    @abstractmethod
    async def parked(self, group_id: str, max_count: int) -> list[ParkedEvent]:
        """The parked events not yet replayed or skipped, oldest first."""

    @abstractmethod
    async def replay_parked(self, group_id: str, skip: bool = False) -> int:
        """Hand every parked event not yet replayed back to the group's members (through its
        retry topic), or with `skip` pass over them; how many."""


class EventIndex(ABC):
    """The search index (OpenSearch), fed by the indexer."""

    @abstractmethod
    async def search(self, query: EventQuery) -> SearchPage:
        """One page in (recorded_at, aggregate_id, version) order, where it ended, if the query
        asks how many events match in all, and whether `query.visible_event_id` is searchable
        (only if of a permitted type) in the very view of the index the page came from."""

    @abstractmethod
    async def progress(self, permitted_types: frozenset[str] | None = None) -> IndexProgress:
        """How far the indexers are with the events of `permitted_types` (None: all types);
        nothing about other types (their lag and times tell when they were written)."""

    @abstractmethod
    async def erase_subject(self, subject: str) -> int:
        """Delete the documents of events about `subject` (its `data_subject` metadata); how
        many there were."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class SnapshotStore(ABC):
    @abstractmethod
    async def save(self, snapshot: Snapshot) -> None:
        """Store it (replacing a snapshot of the same aggregate and version)."""

    @abstractmethod
    async def latest(self, aggregate_id: str, max_version: int | None) -> Snapshot | None:
        """The snapshot with the highest version <= max_version (None: any)."""

    @abstractmethod
    async def delete(self, aggregate_id: str) -> int:
        """Remove every snapshot of the aggregate (erasure: snapshots are derived data and
        may hold personal data in the clear); how many there were."""


class SubjectKeys(ABC):
    """The data subjects' keys, wrapped by the master key, and which aggregates hold events
    about each subject (erasure drops their snapshots).

    Errors: StorageUnavailable for any backend failure.
    """

    @abstractmethod
    async def create(self, key: WrappedKey) -> WrappedKey:
        """Store `key` unless the subject has one (or was erased); the subject's key as
        stored, ours or the one that won a race (every replica then seals with the same)."""

    @abstractmethod
    async def fetch(self, subject: str) -> WrappedKey | None:
        """The subject's key (erased: `wrapped` is None); None when it never had one."""

    @abstractmethod
    async def destroy(self, subject: str, at: datetime) -> WrappedKey:
        """Erase the subject's key for good (a subject without one is recorded as erased, so
        that no key is made for it later). Returns the record: `erased_at` is the first
        erasure's time, so a repeated erasure can tell it was already done."""

    @abstractmethod
    async def rewrap(self, old: WrappedKey, new: WrappedKey) -> bool:
        """Replace `old` by `new` (the same key under another master key) if the stored key is
        still `old`'s; whether it was replaced (not: erased or re-wrapped meanwhile)."""

    @abstractmethod
    async def keys(self) -> list[WrappedKey]:
        """Every subject's key record (for a master key rotation)."""

    @abstractmethod
    async def add_aggregate(self, subject: str, aggregate_id: str) -> None:
        """Record that `aggregate_id` holds events about `subject` (before it does), both
        ways: `aggregates` and `subjects` list it at once."""

    @abstractmethod
    async def aggregates(self, subject: str) -> list[str]:
        """The aggregates recorded for `subject`."""

    @abstractmethod
    async def subjects(self, aggregate_id: str) -> list[str]:
        """The subjects recorded for `aggregate_id` (its snapshots are sealed for each)."""


class SchemaRegistry(ABC):
    """Event schemas, per (aggregate type, event type) a sequence of versions 1, 2, 3, …
    Versions are immutable once registered: callers may cache them for good."""

    @abstractmethod
    async def add(self, schema: SchemaVersion) -> bool:
        """Register `schema` at its version if that version does not exist yet (race-free:
        of concurrent registrations of one version exactly one is applied). False: it
        exists (nothing was written)."""

    @abstractmethod
    async def versions(self, aggregate_type: str, event_type: str) -> list[SchemaVersion]:
        """Every version of the event type, ascending ([] when it has none)."""

    @abstractmethod
    async def event_types(self, aggregate_type: str) -> list[str]:
        """The event types of `aggregate_type` that have a schema, sorted."""
