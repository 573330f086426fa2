"""Events, expected versions and times as protobuf messages, and back."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from eventstore.domain.events import (
    SCHEMA_VERSION_KEY,
    Expectation,
    ExpectedVersion,
    RecordedEvent,
)
from eventstore.v1 import eventstore_pb2 as pb


def timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def time_from_proto(value: Timestamp) -> datetime:
    return value.ToDatetime(tzinfo=UTC)


def expected_from_proto(message: pb.ExpectedVersion, present: bool) -> ExpectedVersion | None:
    if not present:
        return None
    match message.WhichOneof("expectation"):
        case "any":
            return ExpectedVersion.any()
        case "no_stream":
            return ExpectedVersion.no_stream()
        case "stream_exists":
            return ExpectedVersion.stream_exists()
        case "exact":
            return ExpectedVersion.exact(message.exact)
        case _:
            return None


def expected_to_proto(expected: ExpectedVersion) -> pb.ExpectedVersion:
    message = pb.ExpectedVersion()
    match expected.expectation:
        case Expectation.ANY:
            message.any.SetInParent()
        case Expectation.NO_STREAM:
            message.no_stream.SetInParent()
        case Expectation.STREAM_EXISTS:
            message.stream_exists.SetInParent()
        case Expectation.EXACT:
            message.exact = expected.version
    return message


def event_to_proto(event: RecordedEvent) -> pb.Event:
    return pb.Event(
        event_id=str(event.event_id),
        aggregate_id=event.aggregate_id,
        aggregate_type=event.aggregate_type,
        version=event.version,
        event_type=event.event_type,
        data=event.data,
        content_type=event.content_type,
        metadata=dict(event.metadata),
        recorded_at=timestamp(event.recorded_at),
        schema_version=schema_version(event),
    )


def schema_version(event: RecordedEvent) -> int:
    """The version the event's data follows, as its metadata says (0: none)."""
    text = event.metadata.get(SCHEMA_VERSION_KEY)
    # Only the server writes the key (clients cannot set `$` keys): decimal int32 text.
    return int(text) if text is not None and text.isdigit() and len(text) <= 9 else 0


def event_from_proto(event: pb.Event) -> RecordedEvent:
    return RecordedEvent(
        event_id=uuid.UUID(event.event_id),
        aggregate_id=event.aggregate_id,
        aggregate_type=event.aggregate_type,
        version=event.version,
        event_type=event.event_type,
        data=event.data,
        content_type=event.content_type,
        metadata=dict(event.metadata),
        recorded_at=time_from_proto(event.recorded_at),
    )
