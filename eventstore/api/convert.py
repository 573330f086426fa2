"""Wire (protobuf) to domain and back. No validation here: the domain does it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from eventstore.domain.events import (
    AggregateInfo,
    AppendResult,
    Direction,
    Expectation,
    ExpectedVersion,
    RecordedEvent,
)
from eventstore.domain.queries import QueryPage
from eventstore.domain.snapshots import Snapshot
from eventstore.domain.subscriptions import StartAt, SubscriptionItem
from eventstore.domain.validation import RawAppend, RawEvent, RawTime
from eventstore.v1 import eventstore_pb2 as pb


def timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


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


def append_from_proto(request: pb.AppendRequest) -> RawAppend:
    return RawAppend(
        aggregate_id=request.aggregate_id,
        aggregate_type=request.aggregate_type,
        expected=expected_from_proto(
            request.expected_version, request.HasField("expected_version")
        ),
        events=[
            RawEvent(
                event_id=event.event_id,
                event_type=event.event_type,
                data=event.data,
                content_type=event.content_type,
                metadata=dict(event.metadata),
            )
            for event in request.events
        ],
    )


def append_result_to_proto(result: AppendResult) -> pb.AppendResponse:
    return pb.AppendResponse(
        first_version=result.first_version,
        last_version=result.last_version,
        committed_at=timestamp(result.committed_at),
        event_ids=[str(event_id) for event_id in result.event_ids],
        already_committed=result.already_committed,
    )


def direction_from_proto(value: int) -> Direction:
    return Direction.BACKWARDS if value == pb.DIRECTION_BACKWARDS else Direction.FORWARDS


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
    )


def read_responses(
    events: Sequence[RecordedEvent], budget_bytes: int
) -> Iterator[pb.ReadAggregateResponse]:
    """A page of events as messages of at most `budget_bytes` of events each, or of one event
    when that alone is larger: a page of large events never outgrows a gRPC message."""
    message = pb.ReadAggregateResponse()
    size = 0
    for event in events:
        proto = event_to_proto(event)
        encoded = proto.ByteSize() + 6  # the field's tag and length
        if message.events and size + encoded > budget_bytes:
            yield message
            message = pb.ReadAggregateResponse()
            size = 0
        message.events.append(proto)
        size += encoded
    if message.events:
        yield message


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
        recorded_at=event.recorded_at.ToDatetime(tzinfo=UTC),
    )


def aggregate_to_proto(info: AggregateInfo) -> pb.GetAggregateResponse:
    return pb.GetAggregateResponse(
        aggregate_id=info.aggregate_id,
        aggregate_type=info.aggregate_type,
        version=info.version,
        first_recorded_at=timestamp(info.first_recorded_at),
        last_recorded_at=timestamp(info.last_recorded_at),
    )


def start_from_proto(request: pb.SubscribeRequest) -> StartAt:
    match request.WhichOneof("start"):
        case "from_end":
            return StartAt.END
        case "checkpoint":
            return StartAt.CHECKPOINT
        case _:
            return StartAt.BEGINNING


def subscription_item_to_proto(item: SubscriptionItem) -> pb.SubscribeResponse:
    if item.event is not None:
        return pb.SubscribeResponse(event=event_to_proto(item.event), checkpoint=item.checkpoint)
    if item.caught_up:
        return pb.SubscribeResponse(caught_up=pb.CaughtUp(), checkpoint=item.checkpoint)
    return pb.SubscribeResponse(heartbeat=pb.Heartbeat(), checkpoint=item.checkpoint)


def optional_time(message: pb.QueryEventsRequest, field: str) -> RawTime | None:
    if not message.HasField(field):  # type: ignore[arg-type]
        return None
    value: Timestamp = getattr(message, field)
    return value.seconds, value.nanos


def query_page_to_proto(page: QueryPage) -> pb.QueryEventsResponse:
    freshness = pb.IndexFreshness(
        event_visible=page.freshness.event_visible, indexer_lag=page.freshness.indexer_lag
    )
    if page.freshness.reported_at:
        freshness.reported_at.CopyFrom(timestamp(page.freshness.reported_at))
    if page.freshness.indexed_through:
        freshness.indexed_through.CopyFrom(timestamp(page.freshness.indexed_through))
    return pb.QueryEventsResponse(
        events=[event_to_proto(e) for e in page.events],
        next_page_token=page.next_page_token,
        freshness=freshness,
        total_hits=page.total_hits or 0,
    )


def snapshot_to_proto(snapshot: Snapshot) -> pb.Snapshot:
    return pb.Snapshot(
        aggregate_id=snapshot.aggregate_id,
        version=snapshot.version,
        state=snapshot.state,
        state_type=snapshot.state_type,
        schema_version=snapshot.schema_version,
        created_at=timestamp(snapshot.created_at),
    )
