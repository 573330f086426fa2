"""Requests of the gRPC API to domain values, and the streamed responses built from domain
values. What the API shares with Kafka and the client (events, results) is in eventstore.wire;
no validation here: the domain does it."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from eventstore.domain.errors import InvalidArgument
from eventstore.domain.events import Direction, RecordedEvent
from eventstore.domain.schemas import (
    Compatibility,
    SchemaFormat,
    SchemaLimits,
    SchemaRegistration,
    parse_upcast,
)
from eventstore.domain.subscriptions import StartAt, SubscriptionItem
from eventstore.domain.validation import RawAppend, RawEvent, RawTime
from eventstore.usecases.groups import GroupItem
from eventstore.v1 import eventstore_pb2 as pb
from eventstore.wire.events import event_to_proto, expected_from_proto


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
                # The map itself, not a copy: validation counts its entries before it reads
                # any, and copies it once, when it is accepted.
                metadata=event.metadata,
                schema_version=event.schema_version,
            )
            for event in request.events
        ],
    )


def direction_from_proto(value: int) -> Direction:
    return Direction.BACKWARDS if value == pb.DIRECTION_BACKWARDS else Direction.FORWARDS


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


def start_from_proto(request: pb.SubscribeRequest | pb.JoinGroup) -> StartAt:
    """The `start` oneof of a subscription or a group's join (which has no checkpoint)."""
    match request.WhichOneof("start"):
        case "from_end":
            return StartAt.END
        case "checkpoint":
            return StartAt.CHECKPOINT
        case "from_time":
            return StartAt.TIME
        case _:
            return StartAt.BEGINNING


def subscription_item_to_proto(item: SubscriptionItem) -> pb.SubscribeResponse:
    if item.event is not None:
        return pb.SubscribeResponse(event=event_to_proto(item.event), checkpoint=item.checkpoint)
    if item.caught_up:
        return pb.SubscribeResponse(caught_up=pb.CaughtUp(), checkpoint=item.checkpoint)
    return pb.SubscribeResponse(heartbeat=pb.Heartbeat(), checkpoint=item.checkpoint)


def optional_time(
    message: pb.QueryEventsRequest | pb.SubscribeRequest | pb.JoinGroup, field: str
) -> RawTime | None:
    if not message.HasField(field):  # type: ignore[arg-type]
        return None
    value: Timestamp = getattr(message, field)
    return value.seconds, value.nanos


def group_item_to_proto(item: GroupItem) -> pb.SubscribeGroupResponse:
    if item.event is None:
        return pb.SubscribeGroupResponse(heartbeat=pb.Heartbeat())
    return pb.SubscribeGroupResponse(
        delivery=pb.GroupDelivery(
            delivery_id=item.delivery_id, event=event_to_proto(item.event), attempt=item.attempt
        )
    )


_FORMATS = {
    pb.SCHEMA_FORMAT_JSON_SCHEMA: SchemaFormat.JSON_SCHEMA,
    pb.SCHEMA_FORMAT_PROTOBUF: SchemaFormat.PROTOBUF,
}
_COMPATIBILITIES = {
    pb.SCHEMA_COMPATIBILITY_UNSPECIFIED: None,
    pb.SCHEMA_COMPATIBILITY_BACKWARD: Compatibility.BACKWARD,
    pb.SCHEMA_COMPATIBILITY_FORWARD: Compatibility.FORWARD,
    pb.SCHEMA_COMPATIBILITY_FULL: Compatibility.FULL,
    pb.SCHEMA_COMPATIBILITY_NONE: Compatibility.NONE,
}


def schema_view_latest(value: int) -> bool:
    """Whether a request asks for SCHEMA_VIEW_LATEST (an unknown value is refused)."""
    if value not in (pb.SCHEMA_VIEW_AS_STORED, pb.SCHEMA_VIEW_LATEST):
        raise InvalidArgument.of("schema_view", "must be SCHEMA_VIEW_AS_STORED or _LATEST")
    return value == pb.SCHEMA_VIEW_LATEST


def registration_from_proto(
    request: pb.RegisterSchemaRequest, limits: SchemaLimits
) -> SchemaRegistration:
    """The request's enums and upcast operations (names are validated by the caller)."""
    format_ = _FORMATS.get(request.format)
    if format_ is None:
        raise InvalidArgument.of(
            "format", "must be SCHEMA_FORMAT_JSON_SCHEMA or SCHEMA_FORMAT_PROTOBUF"
        )
    if request.compatibility not in _COMPATIBILITIES:
        raise InvalidArgument.of("compatibility", "must be one of the SchemaCompatibility values")
    if request.version < 0:
        raise InvalidArgument.of("version", "must be 0 (the next) or a version")
    upcast: tuple[Any, ...] = ()
    if request.upcast_json:
        if len(request.upcast_json) > limits.max_document_bytes:
            raise InvalidArgument.of(
                "upcast_json", f"must be at most {limits.max_document_bytes} characters"
            )
        try:
            operations = json.loads(request.upcast_json)
        except (ValueError, RecursionError) as exc:
            raise InvalidArgument.of("upcast_json", f"is not JSON: {exc}") from None
        upcast = parse_upcast(operations, limits, "upcast_json")
    return SchemaRegistration(
        aggregate_type=request.aggregate_type,
        event_type=request.event_type,
        format=format_,
        document=request.document,
        compatibility=_COMPATIBILITIES[request.compatibility],
        message_name=request.message_name,
        upcast=upcast,
        version=request.version,
    )
