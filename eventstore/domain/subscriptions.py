"""Subscriptions: filters, where to start, and checkpoint tokens (opaque to clients)."""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from eventstore.domain.errors import InvalidArgument
from eventstore.domain.events import MAX_VERSION, RecordedEvent

#: A Kafka position: (aggregate type, partition) -> next offset to read.
Positions = Mapping[tuple[str, int], int]
#: Kafka offsets are int64, partitions int32; versions are int64, and a checkpoint's is the last
#: one delivered, so the next one must exist.
MAX_OFFSET = 2**63 - 1
MAX_PARTITION = 2**31 - 1
MAX_CHECKPOINT_VERSION = MAX_VERSION - 1


@dataclass(frozen=True, slots=True)
class SubscriptionFilter:
    aggregate_id: str | None = None
    #: empty: every aggregate type
    aggregate_types: frozenset[str] = frozenset()
    #: empty: every event type
    event_types: frozenset[str] = frozenset()
    #: set by the server: the aggregate types the subscriber may see (None: all)
    permitted_types: frozenset[str] | None = None

    def matches(self, event: RecordedEvent) -> bool:
        return (
            (self.aggregate_id is None or event.aggregate_id == self.aggregate_id)
            and (self.permitted_types is None or event.aggregate_type in self.permitted_types)
            and (not self.aggregate_types or event.aggregate_type in self.aggregate_types)
            and (not self.event_types or event.event_type in self.event_types)
        )


class StartAt(enum.Enum):
    BEGINNING = "beginning"
    END = "end"
    CHECKPOINT = "checkpoint"
    TIME = "time"


@dataclass(frozen=True, slots=True)
class AggregateCheckpoint:
    """One aggregate: every version up to and including `version` was delivered."""

    aggregate_id: str
    version: int


@dataclass(frozen=True, slots=True)
class LogCheckpoint:
    """Wider filters: the next offset per (aggregate type, partition); absent means 0."""

    positions: Mapping[tuple[str, int], int] = field(default_factory=dict)


Checkpoint = AggregateCheckpoint | LogCheckpoint


@dataclass(frozen=True, slots=True)
class Start:
    at: StartAt
    checkpoint: Checkpoint | None = None
    #: StartAt.TIME: the events recorded at or after this
    time: datetime | None = None

    def includes(self, event: RecordedEvent) -> bool:
        """Whether the start lets `event` through (only a start time holds any back)."""
        return self.time is None or event.recorded_at >= self.time


def encode_checkpoint(checkpoint: Checkpoint) -> str:
    if isinstance(checkpoint, AggregateCheckpoint):
        body: dict[str, object] = {"a": checkpoint.aggregate_id, "n": checkpoint.version}
    else:
        by_type: dict[str, dict[str, int]] = {}
        for (aggregate_type, partition), offset in sorted(checkpoint.positions.items()):
            by_type.setdefault(aggregate_type, {})[str(partition)] = offset
        body = {"k": by_type}
    raw = json.dumps({"v": 1, **body}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_checkpoint(token: str) -> Checkpoint:
    bad = InvalidArgument.of("checkpoint", "is not a checkpoint this server issued")
    try:
        padded = token + "=" * (-len(token) % 4)
        body = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(body, dict) or body.get("v") != 1:
            raise bad
        if "a" in body:
            aggregate_id, version = body["a"], body["n"]
            # `type(...) is int`: JSON's true and false are ints to isinstance.
            if not (
                isinstance(aggregate_id, str)
                and type(version) is int
                and 0 <= version <= MAX_CHECKPOINT_VERSION
            ):
                raise bad
            return AggregateCheckpoint(aggregate_id, version)
        positions: dict[tuple[str, int], int] = {}
        for aggregate_type, partitions in body["k"].items():
            for partition, offset in partitions.items():
                number = int(partition)
                if not (
                    type(offset) is int
                    and 0 <= offset <= MAX_OFFSET
                    and 0 <= number <= MAX_PARTITION
                ):
                    raise bad
                positions[(str(aggregate_type), number)] = offset
        return LogCheckpoint(positions)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise bad from exc


@dataclass(frozen=True, slots=True)
class SubscriptionItem:
    """One message of a subscription: an event, the caught-up marker, or a heartbeat."""

    checkpoint: str
    event: RecordedEvent | None = None
    caught_up: bool = False
    heartbeat: bool = False
