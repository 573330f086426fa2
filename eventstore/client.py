"""An asyncio Python client over the generated stubs, speaking domain types.

Example (run by tests/integration/test_examples.py)::

    import asyncio
    import json

    from eventstore.client import Event, EventStoreClient, ExpectedVersion


    async def main() -> None:
        async with EventStoreClient("127.0.0.1:50051") as client:
            result = await client.append(
                "order-1", "Order", [Event("OrderPlaced", {"total": 3})],
                expected=ExpectedVersion.no_stream(),
            )
            print(result.first_version)  # 1
            async for event in client.read("order-1"):
                print(event.version, event.event_type, json.loads(event.data))


    asyncio.run(main())

Results are the store's own types (`RecordedEvent`, `AppendResult`, `AggregateInfo`,
`QueryPage`, `Snapshot`), never protobuf messages. Errors arrive as `ClientError` subclasses
carrying what the server's structured details say. Appends are retried with backoff on
retryable codes; that is safe because every event gets its id here, before the first attempt,
and the server answers a repeated append with its original result.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.trace import Link

from eventstore import tracing
from eventstore.domain.events import AggregateInfo, AppendResult, ExpectedVersion, RecordedEvent
from eventstore.domain.groups import ParkedEvent
from eventstore.domain.personal import ErasureReceipt, ErasureStep
from eventstore.domain.queries import Freshness, QueryPage
from eventstore.domain.schemas import Compatibility, SchemaFormat, SchemaVersion
from eventstore.domain.snapshots import Snapshot
from eventstore.domain.tracecontext import TraceContext, trace_context_of
from eventstore.sizes import CLIENT_MAX_RECEIVE_BYTES
from eventstore.v1 import eventstore_pb2 as pb
from eventstore.v1 import eventstore_pb2_grpc as pb_grpc
from eventstore.wire.events import event_from_proto, expected_from_proto, expected_to_proto
from eventstore.wire.results import (
    aggregate_from_proto,
    append_result_from_proto,
    erasure_from_proto,
    parked_from_proto,
    query_page_from_proto,
    schema_from_proto,
    snapshot_from_proto,
)

__all__ = [
    "AggregateInfo",
    "AggregateNotFoundError",
    "AppendResult",
    "ClientError",
    "Compatibility",
    "ErasureReceipt",
    "ErasureStep",
    "Event",
    "EventIdReusedError",
    "EventStoreClient",
    "ExpectedVersion",
    "Freshness",
    "GroupDelivery",
    "GroupMember",
    "InvalidArgumentError",
    "NotYetSearchableError",
    "ParkedEvent",
    "PermissionDeniedError",
    "PersonalDataError",
    "QueryPage",
    "RecordedEvent",
    "ResourceExhaustedError",
    "RetryPolicy",
    "SchemaFormat",
    "SchemaIncompatibleError",
    "SchemaNotFoundError",
    "SchemaVersion",
    "SchemaVersionConflictError",
    "SchemaViewName",
    "Snapshot",
    "SubscriptionMessage",
    "TlsOptions",
    "TraceContext",
    "UnauthenticatedError",
    "UnavailableError",
    "WrongExpectedVersionError",
    "trace_context",
    "trace_link",
    "trace_parent",
]

M = TypeVar("M", bound=Message)

#: CANCELLED here comes from the other side (a replica stopping cut the call: seen once in
#: 1,480 appends of a rolling restart); the caller's own cancellation raises CancelledError.
#: Every call is safe to repeat: appends are idempotent by their event ids.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    }
)


@dataclass(frozen=True)
class Event:
    """An event to append. `data` may be bytes, or anything JSON-serialisable.

    Its `event_id` is chosen here, once: appending the same `Event` again (a retry) is answered
    with the original result instead of a duplicate.
    """

    event_type: str
    data: Any = b""
    metadata: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)
    #: The schema version `data` follows, if its type has schemas (0: the latest registered).
    schema_version: int = 0

    def payload(self) -> bytes:
        """`data` as the bytes sent: as is, or as compact JSON."""
        if isinstance(self.data, bytes | bytearray):
            return bytes(self.data)
        return json.dumps(self.data, separators=(",", ":")).encode()


def trace_context(event: RecordedEvent) -> TraceContext | None:
    """The W3C trace context of the append that stored `event` (None: it was not traced; the
    server traces with EVENTSTORE_TRACING=otlp)."""
    return trace_context_of(event.metadata)


def trace_parent(event: RecordedEvent) -> Context | None:
    """An OpenTelemetry context to handle `event` in as a child of its append:
    ``tracer.start_as_current_span("handle", context=trace_parent(event))``."""
    trace = trace_context_of(event.metadata)
    return tracing.parent_of(trace) if trace is not None else None


def trace_link(event: RecordedEvent) -> Link | None:
    """A span link to the append of `event`, for a span of your own that handles it (or many
    events: one link each): ``tracer.start_as_current_span("handle", links=[link])``."""
    trace = trace_context_of(event.metadata)
    return tracing.link(trace) if trace is not None else None


def _traced(metadata: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The call's metadata with the caller's trace context (`traceparent`), if it has one:
    the server's span of the call is then its child. Without OpenTelemetry's SDK configured
    by the application, there is none and nothing is added."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return (*metadata, *carrier.items()) if carrier else metadata


@dataclass(frozen=True)
class SubscriptionMessage:
    """One message of a subscription: an event, the caught-up marker or a heartbeat.

    `checkpoint` resumes the subscription right after this message (pass it as `start`).
    """

    checkpoint: str
    event: RecordedEvent | None = None
    caught_up: bool = False
    heartbeat: bool = False


@dataclass(frozen=True)
class GroupDelivery:
    """An event a consumer group gave this member: acknowledge it (`GroupMember.ack`) once
    handled, or reject it (`nack`). `attempt` counts the group's deliveries of this event."""

    delivery_id: int
    event: RecordedEvent
    attempt: int


#: How events of types with schemas are delivered: as appended, or upcast to the latest version.
SchemaViewName = Literal["as_stored", "latest"]
_SCHEMA_VIEWS = {"as_stored": pb.SCHEMA_VIEW_AS_STORED, "latest": pb.SCHEMA_VIEW_LATEST}
_SCHEMA_FORMATS = {
    SchemaFormat.JSON_SCHEMA: pb.SCHEMA_FORMAT_JSON_SCHEMA,
    SchemaFormat.PROTOBUF: pb.SCHEMA_FORMAT_PROTOBUF,
}
_COMPATIBILITIES = {
    None: pb.SCHEMA_COMPATIBILITY_UNSPECIFIED,
    Compatibility.BACKWARD: pb.SCHEMA_COMPATIBILITY_BACKWARD,
    Compatibility.FORWARD: pb.SCHEMA_COMPATIBILITY_FORWARD,
    Compatibility.FULL: pb.SCHEMA_COMPATIBILITY_FULL,
    Compatibility.NONE: pb.SCHEMA_COMPATIBILITY_NONE,
}


class GroupMember:
    """One member of a consumer group (`EventStoreClient.subscribe_group`): iterate over its
    deliveries, answer each with `ack` or `nack`. Closing it (leaving the `async with`) leaves
    the group: what it had not acknowledged goes to another member."""

    def __init__(self, call: Any, join: pb.SubscribeGroupRequest) -> None:
        self._call = call
        self._join = join

    async def __aenter__(self) -> GroupMember:
        try:
            await self._call.write(self._join)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        return self

    async def __aexit__(self, *_: object) -> None:
        self._call.cancel()

    def __aiter__(self) -> AsyncIterator[GroupDelivery]:
        return self._deliveries()

    async def _deliveries(self) -> AsyncIterator[GroupDelivery]:
        try:
            async for message in self._call:
                if message.WhichOneof("message") == "delivery":
                    delivery = message.delivery
                    yield GroupDelivery(
                        delivery.delivery_id, event_from_proto(delivery.event), delivery.attempt
                    )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None

    async def ack(self, *deliveries: GroupDelivery) -> None:
        """Handled: the group moves past them."""
        ids = [d.delivery_id for d in deliveries]
        await self._send(pb.SubscribeGroupRequest(ack=pb.GroupAck(delivery_ids=ids)))

    async def nack(self, *deliveries: GroupDelivery, reason: str = "") -> None:
        """Failed: delivered again after a backoff, parked after the group's last attempt."""
        ids = [d.delivery_id for d in deliveries]
        nack = pb.GroupNack(delivery_ids=ids, reason=reason)
        await self._send(pb.SubscribeGroupRequest(nack=nack))

    async def _send(self, request: pb.SubscribeGroupRequest) -> None:
        try:
            await self._call.write(request)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None


@dataclass(frozen=True)
class TlsOptions:
    """TLS to the server: its CA (None: the system's), and a client certificate for mTLS."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )


@dataclass(frozen=True)
class RetryPolicy:
    """How calls are retried on UNAVAILABLE, ABORTED, DEADLINE_EXCEEDED and over a quota:
    up to `attempts` tries in all, with exponential backoff between them, each wait between
    half and all of its step (jittered, yet never near zero).

    The waits add up to at least 1.55 s (at most 3.1 s): enough for a Cassandra coordinator
    lost mid-call to be marked down, or a replica that crashed to be left by round robin. A
    replica that stops on purpose sends GOAWAY, so its calls move without spending a try."""

    attempts: int = 6
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0

    def step(self, failures: int) -> float:
        """The backoff step after `failures` failed tries in a row (1: the first)."""
        return min(self.initial_backoff_s * 2.0 ** (failures - 1), self.max_backoff_s)

    def wait(self, failures: int) -> float:
        """How long to wait after `failures` failed tries: between half and all of the step."""
        step = self.step(failures)
        return random.uniform(step / 2, step)


class ClientError(Exception):
    """A call the server refused or could not answer. `code` is the gRPC status code,
    `message` its text (for people: never parse it), `request_id` the id the server logged
    the call under (set for INTERNAL errors). Subclasses per code carry the structured details."""

    def __init__(
        self, code: grpc.StatusCode, message: str, status: status_pb2.Status | None
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self._details = list(status.details) if status else []
        self.request_id: str | None = None
        info = self._detail(error_details_pb2.RequestInfo)
        if info is not None:
            self.request_id = info.request_id

    def _detail(self, kind: type[M]) -> M | None:
        """The first detail of this kind the server sent, if any."""
        for detail in self._details:
            found = kind()
            if detail.Is(found.DESCRIPTOR) and detail.Unpack(found):
                return found
        return None


class InvalidArgumentError(ClientError):
    """A request field is bad (INVALID_ARGUMENT); nothing was written."""

    @property
    def violations(self) -> list[tuple[str, str]]:
        """(field path, description) per bad field, e.g. ("events[2].data", "...")."""
        out = []
        for detail in self._details:
            bad = error_details_pb2.BadRequest()
            if detail.Is(bad.DESCRIPTOR) and detail.Unpack(bad):
                out += [(v.field, v.description) for v in bad.field_violations]
        return out

    @property
    def fields(self) -> list[str]:
        """The paths of the bad fields."""
        return [name for name, _ in self.violations]


class WrongExpectedVersionError(ClientError):
    """The append's expected version did not hold (FAILED_PRECONDITION); nothing was written."""

    def __init__(
        self, code: grpc.StatusCode, message: str, status: status_pb2.Status | None
    ) -> None:
        super().__init__(code, message, status)
        found = self._detail(pb.WrongExpectedVersion) or pb.WrongExpectedVersion()
        #: The aggregate the append was for.
        self.aggregate_id: str = found.aggregate_id
        #: What the append expected (None if the server did not say).
        self.expected: ExpectedVersion | None = expected_from_proto(
            found.expected, found.HasField("expected")
        )
        #: The aggregate's version when the append was refused (0: no events).
        self.actual_version: int = found.actual_version


class EventIdReusedError(ClientError):
    """An event id the aggregate already holds came with other content (FAILED_PRECONDITION,
    reason EVENT_ID_REUSED); nothing was written. A retry must resend the very same events;
    new events need new ids."""

    @property
    def reason(self) -> dict[str, str]:
        """aggregate_id, field (e.g. "events[1]") and committed_version."""
        info = self._detail(error_details_pb2.ErrorInfo)
        return dict(info.metadata) if info is not None else {}


class PersonalDataError(ClientError):
    """An event naming a data subject was refused (FAILED_PRECONDITION): the server has no
    master key (reason PERSONAL_DATA_NOT_CONFIGURED, metadata `setting`), the subject was
    erased (SUBJECT_ERASED, metadata `field`), or a key's master key is missing
    (MASTER_KEY_MISSING)."""

    @property
    def reason(self) -> str:
        info = self._detail(error_details_pb2.ErrorInfo)
        return info.reason if info is not None else ""


class AggregateNotFoundError(ClientError):
    """The aggregate has no events (NOT_FOUND)."""


class UnavailableError(ClientError):
    """A backend or the server is unavailable (UNAVAILABLE); retrying is safe."""


class UnauthenticatedError(ClientError):
    """No API key or client certificate, or one the server does not know (any more)."""


class PermissionDeniedError(ClientError):
    """The principal may not do this operation on this aggregate type; nothing was written."""

    @property
    def reason(self) -> dict[str, str]:
        """principal, operation and aggregate_type."""
        info = self._detail(error_details_pb2.ErrorInfo)
        return dict(info.metadata) if info is not None else {}


class ResourceExhaustedError(ClientError):
    """Over a quota: try again after `retry_after_s`."""

    @property
    def quota(self) -> str | None:
        """The quota the caller is over (`max_calls_in_flight`, `append_events_per_s`, ...);
        None when the server as a whole was full (EVENTSTORE_MAX_CONCURRENT_RPCS)."""
        info = self._detail(error_details_pb2.ErrorInfo)
        return info.metadata.get("quota") if info is not None else None

    @property
    def retry_after_s(self) -> float | None:
        info = self._detail(error_details_pb2.RetryInfo)
        return float(info.retry_delay.ToNanoseconds()) / 1e9 if info is not None else None


class NotYetSearchableError(ClientError):
    """A query's `min_consistency_token` write was not searchable before the call's deadline
    (DEADLINE_EXCEEDED, reason NOT_YET_SEARCHABLE): the indexer is behind by about
    `indexer_lag` records. Not retried by the client: ask again with a longer timeout."""

    @property
    def indexer_lag(self) -> int | None:
        """Records the indexer still had to index when it last reported (None: unknown)."""
        info = self._detail(error_details_pb2.ErrorInfo)
        lag = int(info.metadata.get("indexer_lag", "-1")) if info is not None else -1
        return None if lag < 0 else lag

    @property
    def indexed_through(self) -> datetime | None:
        """The newest recorded_at the indexer had indexed then (None: unknown)."""
        info = self._detail(error_details_pb2.ErrorInfo)
        value = info.metadata.get("indexed_through", "") if info is not None else ""
        return datetime.fromisoformat(value) if value else None


_ERRORS: dict[grpc.StatusCode, type[ClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: WrongExpectedVersionError,
    grpc.StatusCode.NOT_FOUND: AggregateNotFoundError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
}


class SchemaIncompatibleError(ClientError):
    """FAILED_PRECONDITION: the schema version breaks its compatibility mode (or uses what the
    check cannot decide)."""

    @property
    def problems(self) -> list[tuple[str, str]]:
        """(JSON path into the schema, why) pairs."""
        failure = self._detail(error_details_pb2.PreconditionFailure)
        if failure is None:
            return []
        return [(v.subject, v.description) for v in failure.violations]


class SchemaVersionConflictError(ClientError):
    """FAILED_PRECONDITION: the registration named a version other than the next one."""


class SchemaNotFoundError(ClientError):
    """NOT_FOUND: the event type has no such schema version."""


#: Errors that share a status code with another, told apart by their ErrorInfo reason.
_BY_REASON: dict[str, type[ClientError]] = {
    "EVENT_ID_REUSED": EventIdReusedError,
    "NOT_YET_SEARCHABLE": NotYetSearchableError,
    "PERSONAL_DATA_NOT_CONFIGURED": PersonalDataError,
    "SUBJECT_ERASED": PersonalDataError,
    "MASTER_KEY_MISSING": PersonalDataError,
    "SCHEMA_INCOMPATIBLE": SchemaIncompatibleError,
    "SCHEMA_VERSION_CONFLICT": SchemaVersionConflictError,
    "SCHEMA_NOT_FOUND": SchemaNotFoundError,
}


def _error(exc: grpc.aio.AioRpcError) -> ClientError:
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    error = _ERRORS.get(exc.code(), ClientError)(exc.code(), exc.details() or "", status)
    info = error._detail(error_details_pb2.ErrorInfo)
    refined = _BY_REASON.get(info.reason) if info is not None else None
    return refined(exc.code(), exc.details() or "", status) if refined else error


class EventStoreClient:
    """The event store's API over one gRPC channel; use it as an async context manager (or
    call `close()`). Every method raises `ClientError` (a subclass per status) on failure."""

    def __init__(
        self,
        target: str,
        *,
        retry: RetryPolicy | None = None,
        timeout_s: float = 10.0,
        channel: grpc.aio.Channel | None = None,
        tls: TlsOptions | None = None,
        api_key: str | None = None,
    ) -> None:
        """`target` is host:port, or every replica: `ipv4:10.0.0.1:50051,10.0.0.2:50051`, or
        a DNS name resolving to each (`dns:///eventstore-headless:50051`); calls are spread
        over the replicas round robin, and a retry goes to one that is up. `api_key` is sent
        with every call (`authorization: Bearer …`); with mutual TLS the client certificate in
        `tls` can identify the caller instead. `timeout_s` bounds each unary call; `channel`
        replaces the one built here."""
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {api_key}"),) if api_key else ()
        )
        # The server refuses to start with limits that would make it send more (config.py).
        options: list[tuple[str, str | int]] = [
            ("grpc.max_receive_message_length", CLIENT_MAX_RECEIVE_BYTES),
            # pick_first (gRPC's default) would send everything to the first replica.
            ("grpc.lb_policy_name", "round_robin"),
            # A replica that went away (restart, rollout) is dialled again within a second or
            # two, not after gRPC's default backoff (growing to 120 s): until it is, round
            # robin has one replica fewer to send calls and retries to.
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if channel is None and tls is not None:
            channel = grpc.aio.secure_channel(target, tls.credentials(), options=options)
        self._channel = channel or grpc.aio.insecure_channel(target, options=options)
        self._stub = pb_grpc.EventStoreStub(self._channel)
        self._retry = retry or RetryPolicy()
        self._timeout = timeout_s

    async def __aenter__(self) -> EventStoreClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; calls still in flight are cancelled."""
        await self._channel.close(None)

    async def append(
        self,
        aggregate_id: str,
        aggregate_type: str,
        events: Sequence[Event],
        expected: ExpectedVersion | int | None = None,
    ) -> AppendResult:
        """Append atomically. `expected`: an ExpectedVersion, an exact version, or None (any).

        Raises WrongExpectedVersionError when `expected` does not hold, InvalidArgumentError
        for a bad event. Retried on retryable errors (safe: the events' ids make it idempotent).
        """
        if expected is None:
            expected = ExpectedVersion.any()
        elif isinstance(expected, int):
            expected = ExpectedVersion.exact(expected)
        request = pb.AppendRequest(
            aggregate_id=aggregate_id,
            aggregate_type=aggregate_type,
            expected_version=expected_to_proto(expected),
            events=[
                pb.EventData(
                    event_id=str(event.event_id),
                    event_type=event.event_type,
                    data=event.payload(),
                    content_type=event.content_type,
                    metadata=dict(event.metadata),
                    schema_version=event.schema_version,
                )
                for event in events
            ],
        )
        response: pb.AppendResponse = await self._with_retries(self._stub.Append, request)
        return append_result_from_proto(response)

    async def read(
        self,
        aggregate_id: str,
        from_version: int = 0,
        *,
        backwards: bool = False,
        max_count: int = 0,
        schema_view: SchemaViewName = "as_stored",
    ) -> AsyncIterator[RecordedEvent]:
        """The aggregate's events from `from_version` (0: the first, or the last if
        `backwards`), at most `max_count` of them (0: all). An aggregate without events yields
        nothing. Stopping early (`aclose()`, or dropping the generator) cancels the call.

        A retryable failure (a replica restarting, say) is retried under the client's policy,
        from the version after the last one yielded: every event is yielded once, in order.

        `schema_view="latest"`: events of types with schemas come upcast to the latest version
        (the version an event has is `eventstore.wire.events.schema_version(event)`)."""
        step = -1 if backwards else 1
        failures = 0
        yielded = False
        while True:
            request = pb.ReadAggregateRequest(
                aggregate_id=aggregate_id,
                from_version=from_version,
                direction=pb.DIRECTION_BACKWARDS if backwards else pb.DIRECTION_FORWARDS,
                max_count=max_count,
                schema_view=_SCHEMA_VIEWS[schema_view],
            )
            call = self._stub.ReadAggregate(request, metadata=_traced(self._metadata))
            try:
                async for page in call:
                    for message in page.events:
                        event = event_from_proto(message)
                        yield event
                        yielded = True
                        failures = 0
                        from_version = event.version + step
                        if max_count:
                            max_count -= 1
                return
            except grpc.aio.AioRpcError as exc:
                failures += 1
                if exc.code() not in RETRYABLE or failures >= self._retry.attempts:
                    raise _error(exc) from None
            finally:
                # A read left half-way (the caller broke out, or closed this generator) ends on
                # the server now, not when the call is collected: it holds one of the
                # principal's calls in flight there until it does.
                call.cancel()
            if (backwards and yielded and from_version < 1) or (
                max_count == 0 and request.max_count
            ):
                return  # what was asked for was all yielded before the failure
            await asyncio.sleep(self._retry.wait(failures))

    async def read_all(self, aggregate_id: str, **kwargs: Any) -> list[RecordedEvent]:
        """`read` as a list (same arguments)."""
        return [event async for event in self.read(aggregate_id, **kwargs)]

    async def get_aggregate(self, aggregate_id: str) -> AggregateInfo:
        """The aggregate's type, version and first/last recorded time; AggregateNotFoundError
        if it has no events."""
        response: pb.GetAggregateResponse = await self._with_retries(
            self._stub.GetAggregate, pb.GetAggregateRequest(aggregate_id=aggregate_id)
        )
        return aggregate_from_proto(response)

    async def subscribe(
        self,
        *,
        aggregate_id: str = "",
        aggregate_types: Sequence[str] = (),
        event_types: Sequence[str] = (),
        start: str | datetime = "beginning",
        schema_view: SchemaViewName = "as_stored",
    ) -> AsyncIterator[SubscriptionMessage]:
        """History, a caught-up marker, then live events. `start`: "beginning", "end", the
        checkpoint of a message received earlier (to resume right after it), or a time (the
        events recorded at or after it; an aware datetime)."""
        request = pb.SubscribeRequest(
            aggregate_id=aggregate_id,
            aggregate_types=list(aggregate_types),
            event_types=list(event_types),
            schema_view=_SCHEMA_VIEWS[schema_view],
        )
        if isinstance(start, datetime):
            request.from_time.FromDatetime(start)
        elif start == "beginning":
            request.from_beginning.SetInParent()
        elif start == "end":
            request.from_end.SetInParent()
        else:
            request.checkpoint = start
        call = self._stub.Subscribe(request, metadata=_traced(self._metadata))
        try:
            async for message in call:
                kind = message.WhichOneof("message")
                yield SubscriptionMessage(
                    checkpoint=message.checkpoint,
                    event=event_from_proto(message.event) if kind == "event" else None,
                    caught_up=kind == "caught_up",
                    heartbeat=kind == "heartbeat",
                )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        finally:
            call.cancel()

    def subscribe_group(
        self,
        group: str,
        *,
        aggregate_types: Sequence[str] = (),
        event_types: Sequence[str] = (),
        start: str | datetime = "beginning",
        max_in_flight: int = 0,
        schema_view: SchemaViewName = "as_stored",
    ) -> GroupMember:
        """Join consumer group `group` (yours: another principal's group of that name is
        another group). Members share its aggregates: each aggregate goes to one member at a
        time, in version order, one unacknowledged event at a time. `start` ("beginning",
        "end" or a time) places a group that has no position yet. Use as
        `async with client.subscribe_group(...) as member: async for delivery in member:`."""
        join = pb.JoinGroup(
            group=group,
            aggregate_types=list(aggregate_types),
            event_types=list(event_types),
            max_in_flight=max_in_flight,
            schema_view=_SCHEMA_VIEWS[schema_view],
        )
        if isinstance(start, datetime):
            join.from_time.FromDatetime(start)
        elif start == "end":
            join.from_end.SetInParent()
        else:
            join.from_beginning.SetInParent()
        # No request iterator: the member writes its requests (join, acks) on the call.
        call = self._stub.SubscribeGroup(metadata=_traced(self._metadata))  # type: ignore[call-arg]
        return GroupMember(call, pb.SubscribeGroupRequest(join=join))

    async def parked(
        self, group: str, max_count: int = 0, schema_view: SchemaViewName = "as_stored"
    ) -> list[ParkedEvent]:
        """The group's parked events not yet replayed or skipped, oldest first."""
        request = pb.ListParkedRequest(
            group=group, max_count=max_count, schema_view=_SCHEMA_VIEWS[schema_view]
        )
        response: pb.ListParkedResponse = await self._with_retries(self._stub.ListParked, request)
        return [parked_from_proto(p) for p in response.parked]

    async def replay_parked(self, group: str, *, skip: bool = False) -> int:
        """Deliver the group's parked events to its members again (or, with `skip`, pass
        over them); how many."""
        request = pb.ReplayParkedRequest(group=group, skip=skip)
        response: pb.ReplayParkedResponse = await self._with_retries(
            self._stub.ReplayParked, request
        )
        return response.count

    async def query_events(
        self,
        *,
        event_types: Sequence[str] = (),
        aggregate_types: Sequence[str] = (),
        aggregate_id: str = "",
        start: datetime | None = None,
        end: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        visible_event_id: uuid.UUID | None = None,
        count_total: bool = False,
        min_consistency_token: str = "",
        timeout_s: float | None = None,
        schema_view: SchemaViewName = "as_stored",
    ) -> QueryPage:
        """One page of events by type and time (from the search index), sorted by
        (recorded_at, aggregate_id, version); `start` inclusive, `end` exclusive. Pass the
        page's `next_page_token` (same filters) for the next one. `freshness` says how far the
        index has caught up, and whether `visible_event_id` is searchable yet; `total_hits` is
        set when `count_total` is.

        Read your own writes: with `min_consistency_token` (an `AppendResult`'s), the server
        answers once that append is searchable, waiting up to the call's timeout (`timeout_s`,
        else the client's); not in time: `NotYetSearchableError`, with the indexer's lag."""
        request = pb.QueryEventsRequest(
            event_types=list(event_types),
            aggregate_types=list(aggregate_types),
            aggregate_id=aggregate_id,
            page_size=page_size,
            page_token=page_token,
            visible_event_id=str(visible_event_id) if visible_event_id else "",
            count_total=count_total,
            min_consistency_token=min_consistency_token,
            schema_view=_SCHEMA_VIEWS[schema_view],
        )
        if start is not None:
            getattr(request, "from").FromDatetime(start)
        if end is not None:
            request.to.FromDatetime(end)
        response: pb.QueryEventsResponse = await self._with_retries(
            self._stub.QueryEvents, request, timeout_s
        )
        return query_page_from_proto(response, counted=count_total)

    async def query_all(self, **kwargs: Any) -> list[RecordedEvent]:
        """Every page of a query (the filters of `query_events`), as events."""
        events: list[RecordedEvent] = []
        token = ""
        while True:
            page = await self.query_events(page_token=token, **kwargs)
            events += page.events
            token = page.next_page_token
            if not token:
                return events

    async def save_snapshot(
        self,
        aggregate_id: str,
        version: int,
        state: bytes,
        state_type: str,
        schema_version: int = 1,
    ) -> None:
        """Store the aggregate's state as of `version`, a version it has (else
        InvalidArgumentError). `state_type` and `schema_version` say how to read `state`."""
        request = pb.SaveSnapshotRequest(
            aggregate_id=aggregate_id,
            version=version,
            state=state,
            state_type=state_type,
            schema_version=schema_version,
        )
        await self._with_retries(self._stub.SaveSnapshot, request)

    async def get_snapshot(self, aggregate_id: str, max_version: int = 0) -> Snapshot | None:
        """The latest snapshot at or below max_version (0: any), or None."""
        request = pb.GetSnapshotRequest(aggregate_id=aggregate_id, max_version=max_version)
        try:
            snapshot: pb.Snapshot = await self._with_retries(self._stub.GetSnapshot, request)
        except AggregateNotFoundError:
            return None
        return snapshot_from_proto(snapshot)

    async def erase_subject(self, subject: str) -> ErasureReceipt:
        """Erase a data subject (the `data_subject` its events name): needs the `erase` grant.
        Idempotent: erasing again answers a receipt whose `key_destroyed` is False."""
        request = pb.EraseSubjectRequest(subject=subject)
        response: pb.EraseSubjectResponse = await self._with_retries(
            self._stub.EraseSubject, request
        )
        return erasure_from_proto(response)

    async def register_schema(
        self,
        aggregate_type: str,
        event_type: str,
        document: bytes | Mapping[str, Any],
        *,
        upcast: Sequence[Mapping[str, Any]] = (),
        compatibility: Compatibility | None = None,
        schema_format: SchemaFormat = SchemaFormat.JSON_SCHEMA,
        message_name: str = "",
        version: int = 0,
    ) -> SchemaVersion:
        """Register the next version of the event type's schema (a JSON Schema as a mapping or
        JSON bytes, or a serialized FileDescriptorSet with `message_name`). `upcast`: the
        operations turning the previous version's data into this one's. `compatibility`
        None: the previous version's (backward for a first one). `version`: the one it must
        become (0: the next). Registering the latest version's content again returns it."""
        if not isinstance(document, bytes):
            document = json.dumps(document).encode()
        request = pb.RegisterSchemaRequest(
            aggregate_type=aggregate_type,
            event_type=event_type,
            format=_SCHEMA_FORMATS[schema_format],
            document=document,
            message_name=message_name,
            compatibility=_COMPATIBILITIES[compatibility],
            upcast_json=json.dumps(list(upcast)) if upcast else "",
            version=version,
        )
        response: pb.RegisterSchemaResponse = await self._with_retries(
            self._stub.RegisterSchema, request
        )
        return schema_from_proto(response.schema)

    async def list_schemas(self, aggregate_type: str, event_type: str = "") -> list[SchemaVersion]:
        """The schema versions of the aggregate type's event types (or of one), without their
        documents."""
        request = pb.ListSchemasRequest(aggregate_type=aggregate_type, event_type=event_type)
        response: pb.ListSchemasResponse = await self._with_retries(self._stub.ListSchemas, request)
        return [schema_from_proto(s) for s in response.schemas]

    async def get_schema(
        self, aggregate_type: str, event_type: str, version: int = 0
    ) -> SchemaVersion:
        """One version (0: the latest) with its document; SchemaNotFoundError if none."""
        request = pb.GetSchemaRequest(
            aggregate_type=aggregate_type, event_type=event_type, version=version
        )
        response: pb.GetSchemaResponse = await self._with_retries(self._stub.GetSchema, request)
        return schema_from_proto(response.schema)

    async def _with_retries(self, method: Any, request: Any, timeout_s: float | None = None) -> Any:
        for attempt in range(1, self._retry.attempts + 1):
            try:
                return await method(
                    request, timeout=timeout_s or self._timeout, metadata=_traced(self._metadata)
                )
            except grpc.aio.AioRpcError as exc:
                error = _error(exc)
                if isinstance(error, NotYetSearchableError):
                    raise error from None  # it waited as long as the caller allowed
                # Over a quota: the server says when to come back (retrying an append is safe:
                # its event ids make it idempotent). Without that advice it is not a quota of
                # ours (e.g. the server's concurrency limit) and is not retried.
                quota_wait = (
                    error.retry_after_s if isinstance(error, ResourceExhaustedError) else None
                )
                if attempt == self._retry.attempts or (
                    exc.code() not in RETRYABLE and quota_wait is None
                ):
                    raise error from None
            if quota_wait is not None:
                wait = quota_wait + random.uniform(0, self._retry.step(attempt))
            else:
                wait = self._retry.wait(attempt)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")
