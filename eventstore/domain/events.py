"""Events, expected versions and the results of appends and reads."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

#: Versions of an aggregate start at 1; 0 means "no events yet".
NO_EVENTS = 0
#: Versions are Cassandra bigints (int64).
MAX_VERSION = 2**63 - 1
#: Metadata key the server sets to the schema version an event's data was validated against
#: (clients cannot set `$` keys). An event of a type with schemas stored without it counts as 1.
SCHEMA_VERSION_KEY = "$schema_version"


class Expectation(enum.Enum):
    ANY = "any"
    NO_STREAM = "no_stream"
    STREAM_EXISTS = "stream_exists"
    EXACT = "exact"


@dataclass(frozen=True, slots=True)
class ExpectedVersion:
    """What an append expects of the aggregate's current version."""

    expectation: Expectation
    version: int = NO_EVENTS  # only meaningful for EXACT

    @classmethod
    def any(cls) -> ExpectedVersion:
        return cls(Expectation.ANY)

    @classmethod
    def no_stream(cls) -> ExpectedVersion:
        return cls(Expectation.NO_STREAM)

    @classmethod
    def stream_exists(cls) -> ExpectedVersion:
        return cls(Expectation.STREAM_EXISTS)

    @classmethod
    def exact(cls, version: int) -> ExpectedVersion:
        return cls(Expectation.EXACT, version)

    def admits(self, current: int) -> bool:
        match self.expectation:
            case Expectation.ANY:
                return True
            case Expectation.NO_STREAM:
                return current == NO_EVENTS
            case Expectation.STREAM_EXISTS:
                return current > NO_EVENTS
            case Expectation.EXACT:
                return current == self.version

    def __str__(self) -> str:
        if self.expectation is Expectation.EXACT:
            return str(self.version)
        return str(self.expectation.value)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A validated event on its way into the store."""

    event_id: UUID
    event_type: str
    data: bytes
    content_type: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: The schema version the data follows (0: the latest registered, if the type has any).
    schema_version: int = 0


@dataclass(frozen=True, slots=True)
class AppendRequest:
    aggregate_id: str
    aggregate_type: str
    expected: ExpectedVersion
    events: tuple[NewEvent, ...]


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as committed: immutable, with its version and server-assigned time."""

    event_id: UUID
    aggregate_id: str
    aggregate_type: str
    version: int
    event_type: str
    data: bytes
    content_type: str
    metadata: Mapping[str, str]
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class AppendResult:
    first_version: int
    last_version: int
    committed_at: datetime
    event_ids: tuple[UUID, ...]
    #: True when an earlier identical append had committed these events (an idempotent retry).
    already_committed: bool = False
    #: What the server answered to read this write back from queries (clients only: the server
    #: derives it from the last event id when it answers).
    consistency_token: str = ""


class Direction(enum.Enum):
    FORWARDS = "forwards"
    BACKWARDS = "backwards"


@dataclass(frozen=True, slots=True)
class AggregateInfo:
    aggregate_id: str
    aggregate_type: str
    version: int
    first_recorded_at: datetime
    last_recorded_at: datetime
