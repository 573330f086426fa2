"""The interfaces adapters implement. Use cases depend on these, never on a driver."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from eventstore.domain.events import AggregateInfo, Direction, NewEvent, RecordedEvent
from eventstore.domain.queries import Cursor, EventQuery, Freshness
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


class PublicationLog(ABC):
    """Outbox bookkeeping: which aggregates may have committed events not yet published.

    A marker is written *before* the commit it announces, so a crash at any point after the
    commit leaves it behind for the relay; finding work reads the markers, never the events.
    """

    @abstractmethod
    async def mark_pending(self, aggregate_id: str, through_version: int, at: datetime) -> None:
        """Announce an append that would end at `through_version`."""

    @abstractmethod
    async def published_through(self, aggregate_id: str) -> int:
        """The highest version known published, with every earlier one (0: none)."""

    @abstractmethod
    async def mark_published(self, aggregate_id: str, through_version: int) -> None:
        """Record that versions 1..through_version are published; retire their markers."""

    @abstractmethod
    async def pending(self, older_than: datetime) -> list[str]:
        """Aggregates with a marker written before `older_than`."""


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


class EventLog(ABC):
    """The published event log (Kafka), read by subscriptions."""

    @abstractmethod
    async def open(
        self,
        aggregate_types: frozenset[str],
        start: Mapping[tuple[str, int], int] | str,
        key: str | None = None,
    ) -> LogReader:
        """Read the topics of `aggregate_types` (empty: all, including ones created later) from
        positions (absent partitions: from 0), or from "beginning" or "end". With `key`, only
        the partition that key maps to."""


class EventIndex(ABC):
    """The search index (OpenSearch), fed by the indexer."""

    @abstractmethod
    async def search(
        self, query: EventQuery
    ) -> tuple[list[RecordedEvent], Cursor | None, int | None]:
        """One page in (recorded_at, aggregate_id, version) order, where it ended (None when
        it was the last) and, if the query asks, how many events match in all."""

    @abstractmethod
    async def freshness(
        self, visible_event_id: UUID | None, permitted_types: frozenset[str] | None = None
    ) -> Freshness:
        """How far the index is; whether the event is searchable (only if of a permitted
        type: an event the caller may not query is reported as not visible)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class SnapshotStore(ABC):
    @abstractmethod
    async def save(self, snapshot: Snapshot) -> None:
        """Store it (replacing a snapshot of the same aggregate and version)."""

    @abstractmethod
    async def latest(self, aggregate_id: str, max_version: int | None) -> Snapshot | None:
        """The snapshot with the highest version <= max_version (None: any)."""
