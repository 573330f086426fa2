"""The domain's errors. The gRPC layer maps each to a status code in one place (api/errors.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from eventstore.domain.events import ExpectedVersion


class EventStoreError(Exception):
    """Base of every error the store reports on purpose."""


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class InvalidArgument(EventStoreError):
    """The request is malformed; nothing was written. Names every offending field."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        self.violations = violations
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))

    @classmethod
    def of(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])


class WrongExpectedVersion(EventStoreError):
    """Optimistic concurrency: the aggregate is not at the version the append expected."""

    def __init__(self, aggregate_id: str, expected: ExpectedVersion, actual: int) -> None:
        self.aggregate_id = aggregate_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"aggregate {aggregate_id!r} is at version {actual}, the append expected {expected}"
        )


class EventIdReused(EventStoreError):
    """An append resent the ids of committed events with other content: not a retry (which
    must resend exactly the same events), and not new events (which need new ids)."""

    def __init__(self, aggregate_id: str, index: int, version: int, differs: str) -> None:
        self.aggregate_id = aggregate_id
        self.field = f"events[{index}]"
        self.version = version
        super().__init__(
            f"{self.field} has the id of the event committed as version {version} of "
            f"{aggregate_id!r}, but another {differs}: a retry must resend exactly the same "
            "events, and a new event needs a new id"
        )


class AggregateNotFound(EventStoreError):
    def __init__(self, aggregate_id: str) -> None:
        self.aggregate_id = aggregate_id
        super().__init__(f"aggregate {aggregate_id!r} has no events")


class SnapshotNotFound(EventStoreError):
    def __init__(self, aggregate_id: str, max_version: int | None) -> None:
        self.aggregate_id = aggregate_id
        where = f" at or below version {max_version}" if max_version else ""
        super().__init__(f"aggregate {aggregate_id!r} has no snapshot{where}")


class NotYetSearchable(EventStoreError):
    """A query waited for a consistency token's write to become searchable, and the time it
    could wait ran out first. Retrying later succeeds once the indexer has caught up."""

    def __init__(self, waited_s: float, indexer_lag: int, indexed_through: datetime | None) -> None:
        self.waited_s = waited_s
        self.indexer_lag = indexer_lag
        self.indexed_through = indexed_through
        lag = "unknown" if indexer_lag < 0 else f"{indexer_lag} records"
        through = indexed_through.isoformat() if indexed_through else "unknown"
        super().__init__(
            f"the write of min_consistency_token was not searchable after {waited_s:.3g} s "
            f"(indexer lag {lag}, indexed through {through})"
        )


class StorageUnavailable(EventStoreError):
    """A backend (Cassandra, Kafka, OpenSearch) did not answer in time or is down. Retrying
    (idempotently) is safe."""


class BackendRejected(EventStoreError):
    """A backend refused a request of ours as malformed (e.g. an OpenSearch 400): retrying it
    cannot help, and since validation let the client's request through, the fault is ours."""
