"""gRPC servicer: decode, validate, run the use case, encode. Errors go through api/errors.py."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from functools import wraps
from typing import Any, TypeVar

import grpc
import structlog
from grpc_status import rpc_status

from eventstore import metrics, tracing
from eventstore.api import convert
from eventstore.api.admission import Admission, BackendNotConfigured, NotReady
from eventstore.api.auth import Authenticator
from eventstore.api.decoding import Undecodable, received_bytes
from eventstore.api.errors import grpc_code, is_expected, to_status
from eventstore.api.quotas import QuotaLimiter
from eventstore.domain.access import Principal
from eventstore.domain.errors import InvalidArgument
from eventstore.domain.events import RecordedEvent
from eventstore.domain.tracecontext import record_trace_context
from eventstore.domain.validation import (
    Limits,
    validate_aggregate_id,
    validate_append,
    validate_group_join,
    validate_parked,
    validate_query,
    validate_read,
    validate_schema_names,
    validate_snapshot,
    validate_subject,
    validate_subscribe,
)
from eventstore.sizes import READ_MESSAGE_BUDGET_BYTES
from eventstore.usecases import fairness
from eventstore.usecases.append import AppendEvents
from eventstore.usecases.groups import ConsumeGroup, Membership
from eventstore.usecases.personal import EraseSubject, PersonalData
from eventstore.usecases.query import QueryEvents
from eventstore.usecases.read import DescribeAggregate, ReadAggregate
from eventstore.usecases.schemas import Schemas
from eventstore.usecases.snapshots import GetSnapshot, SaveSnapshot
from eventstore.usecases.subscribe import Subscribe
from eventstore.v1 import eventstore_pb2 as pb
from eventstore.v1 import eventstore_pb2_grpc as pb_grpc
from eventstore.wire import results
from eventstore.wire.events import timestamp

log = structlog.get_logger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EventStore"].full_name

Req = TypeVar("Req")
Resp = TypeVar("Resp")


def wait_budget(time_remaining: float | None) -> float | None:
    """How long a call may wait for something with `time_remaining` before its deadline (None:
    no deadline): answered a little before it, so the caller gets our status and details
    rather than its transport's bare DEADLINE_EXCEEDED."""
    if time_remaining is None:
        return None
    return max(time_remaining * 0.9 - 0.02, 0.0)


def request_id_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    # As unique as uuid4().hex, without its system call per request (the random module
    # reseeds in a forked child, so server processes do not share a sequence).
    return f"{random.getrandbits(128):032x}"


def _code_name(exc: Exception, request_id: str) -> str:
    return grpc_code(to_status(exc, request_id, log_unexpected=False)).name


def observe(method: str, code: str, seconds: float) -> None:
    metrics.RPC_REQUESTS.labels(method, code).inc()
    metrics.RPC_LATENCY.labels(method).observe(seconds)
    if method == "Append" and code == "FAILED_PRECONDITION":
        metrics.APPEND_CONFLICTS.inc()


#: Codes that say the server failed (OpenTelemetry's RPC conventions: a server span is an
#: error only for these; a refused request is the caller's, and the span stays unset).
_SERVER_FAULTS = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)


class _Observation:
    """One call's metrics, recorded once, before its answer leaves: whoever sees the status
    sees it counted (recording after the abort raced with the caller reading the counter);
    and its span, ended with that status (tracing off: a span that records nothing)."""

    def __init__(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._method = method
        self._started = time.perf_counter()
        self._recorded = False
        self.span = (
            tracing.server_span(
                f"{SERVICE_NAME}/{method}",
                context.invocation_metadata(),
                {"rpc.system": "grpc", "rpc.service": SERVICE_NAME, "rpc.method": method},
            )
            if tracing.enabled()
            else tracing.INVALID_SPAN
        )

    def done(self, code: str) -> None:
        if not self._recorded:
            self._recorded = True
            observe(self._method, code, time.perf_counter() - self._started)
            span = self.span
            if span.is_recording():
                span.set_attribute("rpc.grpc.status_code", grpc.StatusCode[code].value[0])
                if code in _SERVER_FAULTS:
                    tracing.set_error(span, code)
                span.end()


async def abort_with(
    exc: Exception, request_id: str, context: grpc.aio.ServicerContext[Any, Any]
) -> None:
    if is_expected(exc):
        log.info("request refused", error=type(exc).__name__, detail=str(exc))
    status = rpc_status.to_status(to_status(exc, request_id))
    await context.abort(status.code, status.details, status.trailing_metadata)


def _log_context(rpc: str, request: object, request_id: str) -> Any:
    return structlog.contextvars.bound_contextvars(
        request_id=request_id, rpc=rpc, aggregate_id=getattr(request, "aggregate_id", None)
    )


def unary(
    method: Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]:
    """Request context, metrics, and every error through the one mapping to a status."""

    @wraps(method)
    async def handler(self: Any, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        request_id = request_id_of(context)
        calls = _Observation(method.__name__, context)
        with _log_context(method.__name__, request, request_id), tracing.activate(calls.span):
            try:
                if isinstance(request, Undecodable):
                    raise request.error()
                with self._admission.unary():
                    response = await method(self, request, context)
                calls.done("OK")
                return response
            except Exception as exc:
                calls.done(_code_name(exc, request_id))
                await abort_with(exc, request_id, context)
                raise AssertionError("unreachable: abort raises") from exc
            finally:
                calls.done("CANCELLED")  # the client went away (unless counted already)

    return handler


def server_streaming(
    method: Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]]:
    """As `unary`, for server-streaming RPCs."""

    @wraps(method)
    async def handler(
        self: Any, request: Req, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Resp]:
        request_id = request_id_of(context)
        calls = _Observation(method.__name__, context)
        with _log_context(method.__name__, request, request_id):
            try:
                if isinstance(request, Undecodable):
                    raise request.error()
                items = self._admission.stream(method(self, request, context))
                if calls.span is tracing.INVALID_SPAN:
                    async for item in items:
                        yield item
                else:
                    # Current only while the stream works towards its next message: a span
                    # attached across a yield would be detached in whatever context closes
                    # the generator.
                    while True:
                        with tracing.activate(calls.span):
                            try:
                                item = await anext(items)
                            except StopAsyncIteration:
                                break
                        yield item
                calls.done("OK")
            except Exception as exc:  # noqa: BLE001 - mapped to a status in one place
                calls.done(_code_name(exc, request_id))
                await abort_with(exc, request_id, context)
            finally:
                calls.done("CANCELLED")  # the client went away (unless counted already)

    return handler


MAX_NACK_REASON_CHARS = 1000


async def _answers(
    incoming: AsyncIterator[pb.SubscribeGroupRequest | Undecodable], membership: Membership
) -> None:
    """A group member's acknowledgements and rejections, as they come; anything else ends
    its membership with INVALID_ARGUMENT."""
    async for request in incoming:
        if isinstance(request, Undecodable):
            membership.fail(request.error())
            return
        kind = request.WhichOneof("message")
        if kind == "ack":
            membership.ack(list(request.ack.delivery_ids))
        elif kind == "nack":
            if len(request.nack.reason) > MAX_NACK_REASON_CHARS:
                membership.fail(
                    InvalidArgument.of(
                        "nack.reason", f"must be at most {MAX_NACK_REASON_CHARS} characters"
                    )
                )
                return
            membership.nack(list(request.nack.delivery_ids), request.nack.reason)
        else:
            membership.fail(InvalidArgument.of("join", "only the first request may join"))
            return


def refuse_undecodable(behaviour: Any) -> Any:
    """For a library's servicer (gRPC health): an undecodable request is INVALID_ARGUMENT.
    Its methods are coroutines (streaming ones write with `context.write`)."""

    async def method(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, Undecodable):
            request_id = request_id_of(context)
            with _log_context(behaviour.__name__, request, request_id):
                await abort_with(request.error(), request_id, context)
        return await behaviour(request, context)

    return method


class EventStoreServicer(pb_grpc.EventStoreServicer):
    def __init__(
        self,
        append: AppendEvents,
        read: ReadAggregate,
        describe: DescribeAggregate,
        limits: Limits,
        subscribe: Subscribe | None = None,
        query: QueryEvents | None = None,
        groups: ConsumeGroup | None = None,
        snapshots: tuple[SaveSnapshot, GetSnapshot] | None = None,
        admission: Admission | None = None,
        authenticator: Authenticator | None = None,
        quotas: QuotaLimiter | None = None,
        personal: PersonalData | None = None,
        erase: EraseSubject | None = None,
        schemas: Schemas | None = None,
    ) -> None:
        self._append = append
        self._schemas = schemas
        self._read = read
        self._describe = describe
        self._limits = limits
        self._subscribe = subscribe
        self._query = query
        self._groups = groups
        self._snapshots = snapshots
        self._admission = admission or Admission()
        # None: authentication explicitly turned off (the composition root decides and warns).
        self._authenticator = authenticator or Authenticator(None)
        self._quotas = quotas or QuotaLimiter()
        #: None: no master key; sealed events go out as stored (as Kafka consumers see them)
        self._personal = personal
        self._erase = erase

    async def _opened(self, events: list[RecordedEvent]) -> list[RecordedEvent]:
        """Sealed personal data opened for the caller (redacted once its subject is erased):
        the one place where plaintext of it leaves the server."""
        if self._personal is None:
            return events
        return await self._personal.open(events)

    async def _opened_one(self, event: RecordedEvent | None) -> RecordedEvent | None:
        return None if event is None else (await self._opened([event]))[0]

    def _principal(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        principal = self._authenticator.authenticate(context)
        structlog.contextvars.bind_contextvars(principal=principal.name)
        # Whose share of Cassandra this call's storage calls take (the call's own task).
        fairness.serving.set(principal.name)
        # Before anything else is decoded, validated or asked of a backend.
        self._quotas.take_request(principal)
        return principal

    @contextlib.contextmanager
    def _call(self, context: grpc.aio.ServicerContext[Any, Any]) -> Iterator[Principal]:
        """The caller, holding one of its calls in flight until the block ends: a unary call's
        answer, a stream's last message, an error, or the cancellation of a client that went
        away (a closed stream's generator is closed, which ends the block). Subscribe holds a
        subscription instead."""
        principal = self._principal(context)
        with self._quotas.call(principal):
            yield principal

    @unary
    async def Append(
        self, request: pb.AppendRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AppendResponse:
        with self._call(context) as principal:
            # The quotas first: a principal over its rate is refused before its events are even
            # converted and validated, so refusing it costs little of the CPU others need.
            self._quotas.take_append(principal, len(request.events), received_bytes(request))
            validated = validate_append(convert.append_from_proto(request), self._limits)
            if (trace := tracing.current()) is not None:
                # Stored with the events, so that consumers can continue the trace.
                validated = record_trace_context(validated, trace)
            result = await self._append(validated, principal)
            return results.append_result_to_proto(result)

    @server_streaming
    async def ReadAggregate(
        self, request: pb.ReadAggregateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ReadAggregateResponse]:
        with self._call(context) as principal:
            validated = validate_read(
                request.aggregate_id,
                request.from_version,
                convert.direction_from_proto(request.direction),
                request.max_count,
                self._limits,
            )
            latest = convert.schema_view_latest(request.schema_view)
            # Each page's bytes are taken from the principal's read quota before it is
            # fetched: over it, the read slows down (and takes no Cassandra time meanwhile).
            page_events = self._read.page_events(validated)
            reserved = await self._quotas.reserve_read(principal, page_events)
            try:
                async for page in self._read.pages(validated, principal):
                    page = await self._opened(page)
                    page = await self._view(page, latest)
                    sent = 0
                    for message in convert.read_responses(page, READ_MESSAGE_BUDGET_BYTES):
                        sent += message.ByteSize()
                        yield message
                    self._quotas.settle_read(principal, reserved, sent, len(page))
                    reserved = await self._quotas.reserve_read(principal, page_events)
            finally:
                self._quotas.settle_read(principal, reserved, 0, 0)

    @server_streaming
    async def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SubscribeResponse]:
        if self._subscribe is None:
            raise BackendNotConfigured("subscriptions need the event log (Kafka)")
        # Not a call in flight (`_call`): a subscription is open for hours by design, and has
        # bounds of its own (per principal and per process) that leave room for calls.
        principal = self._principal(context)
        subscription, start = validate_subscribe(
            request.aggregate_id,
            list(request.aggregate_types),
            list(request.event_types),
            convert.start_from_proto(request),
            request.checkpoint,
            self._limits,
            convert.optional_time(request, "from_time"),
        )
        latest = convert.schema_view_latest(request.schema_view)
        # A forbidden filter is refused here, before it takes one of the principal's slots.
        items = self._subscribe(subscription, start, principal)
        policy = self._authenticator.policy()
        # aclosing: a cancelled stream closes the reader (its Kafka consumer) at once.
        async with contextlib.aclosing(items):
            with self._quotas.subscription(principal):
                # Accepted (authorized, filters valid, within bounds): say so before the first
                # message, which may be a heartbeat away. The REST face answers its HTTP
                # status on this (rest/gateway.py); gRPC clients see nothing new.
                await context.send_initial_metadata(())
                metrics.SUBSCRIPTIONS.inc()
                try:
                    async for item in items:
                        if self._authenticator.policy() is not policy:
                            # Reloaded: a removed key or changed grants end the stream (at
                            # the latest one heartbeat after the change).
                            policy = self._authenticator.policy()
                            self._authenticator.recheck(context, principal)
                        if item.event is not None and self._personal is not None:
                            item = replace(item, event=await self._opened_one(item.event))
                        if latest and item.event is not None:
                            item = dataclasses.replace(item, event=await self._upcast(item.event))
                        yield convert.subscription_item_to_proto(item)
                finally:
                    metrics.SUBSCRIPTIONS.dec()

    @server_streaming  # bidirectional: `requests` is the stream of the member's messages
    async def SubscribeGroup(
        self,
        requests: AsyncIterator[pb.SubscribeGroupRequest | Undecodable],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.SubscribeGroupResponse]:
        if self._groups is None:
            raise BackendNotConfigured("consumer groups need the event log (Kafka)")
        principal = self._principal(context)
        incoming = aiter(requests)
        first = await anext(incoming, None)
        if first is None:
            return  # the caller closed without joining
        if isinstance(first, Undecodable):
            raise first.error()
        if first.WhichOneof("message") != "join":
            raise InvalidArgument.of("join", "the first request must join a group")
        join = first.join
        group, subscription, start, in_flight = validate_group_join(
            join.group,
            list(join.aggregate_types),
            list(join.event_types),
            convert.start_from_proto(join),
            convert.optional_time(join, "from_time"),
            join.max_in_flight,
            self._limits,
        )
        latest = convert.schema_view_latest(join.schema_view)
        # A forbidden filter is refused here, before the member takes a subscription slot.
        membership = self._groups.join(group, subscription, start, principal, in_flight)
        policy = self._authenticator.policy()
        with self._quotas.subscription(principal):
            metrics.GROUP_MEMBERS.inc()
            answers = asyncio.create_task(_answers(incoming, membership))
            items = membership.items()
            try:
                async with contextlib.aclosing(items):
                    async for item in items:
                        if self._authenticator.policy() is not policy:
                            policy = self._authenticator.policy()
                            self._authenticator.recheck(context, principal)
                        if item.event is not None:
                            attempt = "first" if item.attempt <= 1 else "retry"
                            metrics.GROUP_DELIVERIES.labels(attempt).inc()
                        if item.event is not None and self._personal is not None:
                            item = replace(item, event=await self._opened_one(item.event))
                        if latest and item.event is not None:
                            item = dataclasses.replace(item, event=await self._upcast(item.event))
                        yield convert.group_item_to_proto(item)
            finally:
                answers.cancel()
                metrics.GROUP_MEMBERS.dec()

    @unary
    async def ListParked(
        self, request: pb.ListParkedRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListParkedResponse:
        if self._groups is None:
            raise BackendNotConfigured("consumer groups need the event log (Kafka)")
        with self._call(context) as principal:
            count = validate_parked(request.group, request.max_count, self._limits)
            latest = convert.schema_view_latest(request.schema_view)
            parked = await self._groups.parked(request.group, principal, count)
            opened = await self._opened([p.event for p in parked])
            parked = [replace(p, event=e) for p, e in zip(parked, opened, strict=True)]
            if latest:
                parked = [dataclasses.replace(p, event=await self._upcast(p.event)) for p in parked]
            return pb.ListParkedResponse(parked=[results.parked_to_proto(p) for p in parked])

    @unary
    async def ReplayParked(
        self, request: pb.ReplayParkedRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ReplayParkedResponse:
        if self._groups is None:
            raise BackendNotConfigured("consumer groups need the event log (Kafka)")
        with self._call(context) as principal:
            validate_parked(request.group, 0, self._limits)
            count = await self._groups.replay_parked(request.group, principal, request.skip)
            return pb.ReplayParkedResponse(count=count)

    @unary
    async def QueryEvents(
        self, request: pb.QueryEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.QueryEventsResponse:
        if self._query is None:
            raise BackendNotConfigured("queries need the search index (OpenSearch)")
        with self._call(context) as principal:
            query = validate_query(
                list(request.event_types),
                list(request.aggregate_types),
                request.aggregate_id,
                convert.optional_time(request, "from"),
                convert.optional_time(request, "to"),
                request.page_size,
                request.page_token,
                request.visible_event_id,
                self._limits,
                count_total=request.count_total,
                min_consistency_token=request.min_consistency_token,
            )
            latest = convert.schema_view_latest(request.schema_view)
            page = await self._query(query, principal, wait_budget(context.time_remaining()))
            page = replace(page, events=await self._opened(list(page.events)))
            if latest:
                # The index keeps what was stored; the answer is upcast.
                page = dataclasses.replace(page, events=await self._view(page.events, True))
            return results.query_page_to_proto(page)

    @unary
    async def SaveSnapshot(
        self, request: pb.SaveSnapshotRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SaveSnapshotResponse:
        if self._snapshots is None:
            raise BackendNotConfigured("snapshots need their store")
        with self._call(context) as principal:
            validate_snapshot(
                request.aggregate_id,
                request.version,
                request.state,
                request.state_type,
                request.schema_version,
                self._limits,
            )
            saved = await self._snapshots[0](
                request.aggregate_id,
                request.version,
                request.state,
                request.state_type,
                request.schema_version,
                principal,
            )
            return pb.SaveSnapshotResponse(created_at=timestamp(saved.created_at))

    @unary
    async def GetSnapshot(
        self, request: pb.GetSnapshotRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Snapshot:
        if self._snapshots is None:
            raise BackendNotConfigured("snapshots need their store")
        with self._call(context) as principal:
            validate_aggregate_id(request.aggregate_id, self._limits)
            if request.max_version < 0:
                raise InvalidArgument.of("max_version", "must be 0 (latest) or a version")
            snapshot = await self._snapshots[1](
                request.aggregate_id, request.max_version or None, principal
            )
            return results.snapshot_to_proto(snapshot)

    async def _view(self, events: list[RecordedEvent], latest: bool) -> list[RecordedEvent]:
        """Events as the reader asked: as stored, or upcast to their types' latest schemas."""
        if not latest or self._schemas is None:
            return events
        return await self._schemas.catalog.latest(events)

    async def _upcast(self, event: RecordedEvent) -> RecordedEvent:
        if self._schemas is None:
            return event
        return await self._schemas.catalog.upcast_event(event)

    def _registry(self) -> Schemas:
        if self._schemas is None:
            raise BackendNotConfigured("schemas need their registry")
        return self._schemas

    @unary
    async def RegisterSchema(
        self, request: pb.RegisterSchemaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RegisterSchemaResponse:
        schemas = self._registry()
        with self._call(context) as principal:
            validate_schema_names(request.aggregate_type, request.event_type, self._limits)
            registration = convert.registration_from_proto(request, schemas.limits)
            registered = await schemas.register(registration, principal)
            return pb.RegisterSchemaResponse(
                schema=results.schema_to_proto(registered.schema),
                already_registered=registered.already_registered,
            )

    @unary
    async def ListSchemas(
        self, request: pb.ListSchemasRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListSchemasResponse:
        schemas = self._registry()
        with self._call(context) as principal:
            validate_schema_names(
                request.aggregate_type, request.event_type, self._limits, event_type_optional=True
            )
            found = await schemas.list(request.aggregate_type, request.event_type, principal)
            return pb.ListSchemasResponse(
                schemas=[results.schema_to_proto(s, with_document=False) for s in found]
            )

    @unary
    async def GetSchema(
        self, request: pb.GetSchemaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetSchemaResponse:
        schemas = self._registry()
        with self._call(context) as principal:
            validate_schema_names(request.aggregate_type, request.event_type, self._limits)
            if request.version < 0:
                raise InvalidArgument.of("version", "must be 0 (the latest) or a version")
            found = await schemas.get(
                request.aggregate_type, request.event_type, request.version, principal
            )
            return pb.GetSchemaResponse(schema=results.schema_to_proto(found))

    @unary
    async def EraseSubject(
        self, request: pb.EraseSubjectRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.EraseSubjectResponse:
        if self._erase is None:
            raise BackendNotConfigured(
                "erasure needs a master key (EVENTSTORE_MASTER_KEY_FILE) and the key store"
            )
        with self._call(context) as principal:
            validate_subject(request.subject)
            receipt = await self._erase(request.subject, principal)
            return results.erasure_to_proto(receipt)

    @unary
    async def GetAggregate(
        self, request: pb.GetAggregateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetAggregateResponse:
        with self._call(context) as principal:
            validate_aggregate_id(request.aggregate_id, self._limits)
            described = await self._describe(request.aggregate_id, principal)
            return results.aggregate_to_proto(described)


def _forward_unary(name: str) -> Any:
    async def method(
        self: DeferredServicer, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        return await getattr(await self._target(context), name)(request, context)

    method.__name__ = name
    return method


def _forward_stream(name: str) -> Any:
    async def method(
        self: DeferredServicer, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async for item in getattr(await self._target(context), name)(request, context):
            yield item

    method.__name__ = name
    return method


class DeferredServicer(pb_grpc.EventStoreServicer):
    """What gRPC serves from the moment the port opens: until the backends answer and the real
    servicer is attached, every RPC is refused with UNAVAILABLE (and health says NOT_SERVING),
    so probes and clients can tell "starting" from "down"."""

    def __init__(self) -> None:
        self.target: EventStoreServicer | None = None

    async def _target(self, context: grpc.aio.ServicerContext[Any, Any]) -> EventStoreServicer:
        if self.target is None:
            await abort_with(NotReady(), request_id_of(context), context)
        assert self.target is not None
        return self.target

    Append = _forward_unary("Append")
    GetAggregate = _forward_unary("GetAggregate")
    QueryEvents = _forward_unary("QueryEvents")
    SaveSnapshot = _forward_unary("SaveSnapshot")
    GetSnapshot = _forward_unary("GetSnapshot")
    ListParked = _forward_unary("ListParked")
    ReplayParked = _forward_unary("ReplayParked")
    EraseSubject = _forward_unary("EraseSubject")
    RegisterSchema = _forward_unary("RegisterSchema")
    ListSchemas = _forward_unary("ListSchemas")
    GetSchema = _forward_unary("GetSchema")
    ReadAggregate = _forward_stream("ReadAggregate")
    Subscribe = _forward_stream("Subscribe")
    SubscribeGroup = _forward_stream("SubscribeGroup")
