"""What the API answers with, both ways: the server encodes these results, the client decodes
them into the same domain types."""

from __future__ import annotations

import json
import uuid

from eventstore.domain.events import AggregateInfo, AppendResult
from eventstore.domain.groups import ParkedEvent
from eventstore.domain.personal import ErasureReceipt, ErasureStep
from eventstore.domain.queries import Freshness, QueryPage, encode_consistency_token
from eventstore.domain.schemas import (
    Compatibility,
    SchemaFormat,
    SchemaLimits,
    SchemaVersion,
    UpcastOp,
    parse_upcast,
)
from eventstore.domain.snapshots import Snapshot
from eventstore.v1 import eventstore_pb2 as pb
from eventstore.wire.events import event_from_proto, event_to_proto, time_from_proto, timestamp


def append_result_to_proto(result: AppendResult) -> pb.AppendResponse:
    return pb.AppendResponse(
        first_version=result.first_version,
        last_version=result.last_version,
        committed_at=timestamp(result.committed_at),
        event_ids=[str(event_id) for event_id in result.event_ids],
        already_committed=result.already_committed,
        consistency_token=result.consistency_token
        or encode_consistency_token(result.event_ids[-1]),
    )


def append_result_from_proto(message: pb.AppendResponse) -> AppendResult:
    return AppendResult(
        first_version=message.first_version,
        last_version=message.last_version,
        committed_at=time_from_proto(message.committed_at),
        event_ids=tuple(uuid.UUID(event_id) for event_id in message.event_ids),
        already_committed=message.already_committed,
        consistency_token=message.consistency_token,
    )


def aggregate_to_proto(info: AggregateInfo) -> pb.GetAggregateResponse:
    return pb.GetAggregateResponse(
        aggregate_id=info.aggregate_id,
        aggregate_type=info.aggregate_type,
        version=info.version,
        first_recorded_at=timestamp(info.first_recorded_at),
        last_recorded_at=timestamp(info.last_recorded_at),
    )


def aggregate_from_proto(message: pb.GetAggregateResponse) -> AggregateInfo:
    return AggregateInfo(
        aggregate_id=message.aggregate_id,
        aggregate_type=message.aggregate_type,
        version=message.version,
        first_recorded_at=time_from_proto(message.first_recorded_at),
        last_recorded_at=time_from_proto(message.last_recorded_at),
    )


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


def query_page_from_proto(message: pb.QueryEventsResponse, counted: bool) -> QueryPage:
    """`counted`: whether the query asked for the total (the message says 0 when it did not)."""
    freshness = message.freshness
    return QueryPage(
        events=[event_from_proto(e) for e in message.events],
        next_page_token=message.next_page_token,
        freshness=Freshness(
            event_visible=freshness.event_visible,
            indexer_lag=freshness.indexer_lag,
            reported_at=(
                time_from_proto(freshness.reported_at)
                if freshness.HasField("reported_at")
                else None
            ),
            indexed_through=(
                time_from_proto(freshness.indexed_through)
                if freshness.HasField("indexed_through")
                else None
            ),
        ),
        total_hits=message.total_hits if counted else None,
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


def snapshot_from_proto(message: pb.Snapshot) -> Snapshot:
    return Snapshot(
        aggregate_id=message.aggregate_id,
        version=message.version,
        state=message.state,
        state_type=message.state_type,
        schema_version=message.schema_version,
        created_at=time_from_proto(message.created_at),
    )


def parked_to_proto(parked: ParkedEvent) -> pb.ParkedEvent:
    return pb.ParkedEvent(
        event=event_to_proto(parked.event),
        position=parked.position,
        reason=parked.reason,
        attempts=parked.attempts,
        parked_at=timestamp(parked.parked_at),
    )


def parked_from_proto(message: pb.ParkedEvent) -> ParkedEvent:
    return ParkedEvent(
        event=event_from_proto(message.event),
        position=message.position,
        reason=message.reason,
        attempts=message.attempts,
        parked_at=time_from_proto(message.parked_at),
    )


def erasure_to_proto(receipt: ErasureReceipt) -> pb.EraseSubjectResponse:
    return pb.EraseSubjectResponse(
        subject=receipt.subject,
        key_destroyed=receipt.key_destroyed,
        erased_at=timestamp(receipt.erased_at),
        steps=[
            pb.ErasureStep(store=s.store, action=s.action, count=s.count) for s in receipt.steps
        ],
        audit_event_id=str(receipt.audit_event_id),
    )


def erasure_from_proto(response: pb.EraseSubjectResponse) -> ErasureReceipt:
    return ErasureReceipt(
        subject=response.subject,
        key_destroyed=response.key_destroyed,
        erased_at=time_from_proto(response.erased_at),
        steps=tuple(ErasureStep(s.store, s.action, s.count) for s in response.steps),
        audit_event_id=uuid.UUID(response.audit_event_id),
    )


_FORMATS = {
    SchemaFormat.JSON_SCHEMA: pb.SCHEMA_FORMAT_JSON_SCHEMA,
    SchemaFormat.PROTOBUF: pb.SCHEMA_FORMAT_PROTOBUF,
}
_COMPATIBILITIES = {
    Compatibility.BACKWARD: pb.SCHEMA_COMPATIBILITY_BACKWARD,
    Compatibility.FORWARD: pb.SCHEMA_COMPATIBILITY_FORWARD,
    Compatibility.FULL: pb.SCHEMA_COMPATIBILITY_FULL,
    Compatibility.NONE: pb.SCHEMA_COMPATIBILITY_NONE,
}


def schema_to_proto(schema: SchemaVersion, with_document: bool = True) -> pb.EventSchema:
    message = pb.EventSchema(
        aggregate_type=schema.aggregate_type,
        event_type=schema.event_type,
        version=schema.version,
        format=_FORMATS[schema.format],
        document=schema.document if with_document else b"",
        message_name=schema.message_name,
        compatibility=_COMPATIBILITIES[schema.compatibility],
        upcast_json=json.dumps([op.to_json() for op in schema.upcast]) if schema.upcast else "",
        registered_by=schema.registered_by,
    )
    if schema.registered_at is not None:
        message.registered_at.CopyFrom(timestamp(schema.registered_at))
    return message


def schema_from_proto(message: pb.EventSchema) -> SchemaVersion:
    upcast: tuple[UpcastOp, ...] = ()
    if message.upcast_json:
        # The server's own rendering of operations it accepted: read back without its limits.
        upcast = parse_upcast(
            json.loads(message.upcast_json),
            SchemaLimits(max_upcast_operations=2**31, max_upcast_value_bytes=2**31),
        )
    return SchemaVersion(
        aggregate_type=message.aggregate_type,
        event_type=message.event_type,
        version=message.version,
        format={v: k for k, v in _FORMATS.items()}[message.format],
        document=message.document,
        compatibility={v: k for k, v in _COMPATIBILITIES.items()}[message.compatibility],
        message_name=message.message_name,
        upcast=upcast,
        registered_at=(
            time_from_proto(message.registered_at) if message.HasField("registered_at") else None
        ),
        registered_by=message.registered_by,
    )
