"""Tracing (eventstore/tracing.py, domain/tracecontext.py): the RPC span continues the caller's
trace, the append's context is stored with its events and carried by the Kafka record and the
OpenSearch document; off, nothing is recorded or stored. The gRPC layer over the in-memory
fake, spans in the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from eventstore import tracing
from eventstore.client import (
    Event,
    EventStoreClient,
    ExpectedVersion,
    trace_context,
    trace_link,
    trace_parent,
)
from eventstore.config import ConfigError, ServerSettings, TracingSettings, load
from eventstore.domain.events import Direction, RecordedEvent
from eventstore.domain.tracecontext import (
    MAX_TRACESTATE_BYTES,
    TRACEPARENT_KEY,
    TRACESTATE_KEY,
    TraceContext,
    bounded_tracestate,
    trace_context_of,
)
from eventstore.ports import PublishFailed
from eventstore.publishing.kafka import _Delivery, _end_when_settled, _send_span
from eventstore.search.documents import Form, build_document, index_mappings
from eventstore.server import Components, start
from eventstore.storage.memory import InMemoryEventStorage
from eventstore.v1 import eventstore_pb2 as pb
from eventstore.wire.events import expected_to_proto
from eventstore.wire.records import record_headers
from indexer.bulk import BulkWriter, make_item

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"

EVENT = RecordedEvent(
    event_id=uuid.UUID("6e8bc430-9c3a-11d9-9669-0800200c9a66"),
    aggregate_id="order-17",
    aggregate_type="Order",
    version=3,
    event_type="OrderPlaced",
    data=b'{"total": 12}',
    content_type="application/json",
    metadata={"tenant": "t1"},
    recorded_at=datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC),
)
TRACED = dataclasses.replace(
    EVENT, metadata={**EVENT.metadata, TRACEPARENT_KEY: CALLER, TRACESTATE_KEY: "congo=t61rcWkgMzE"}
)


# --- the W3C rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "traceparent",
    [
        "",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # a version we do not know
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        CALLER + "-extra",
    ],
)
def test_an_invalid_traceparent_is_no_context(traceparent: str) -> None:
    assert TraceContext.parse(traceparent) is None


def test_a_valid_traceparent_says_its_ids_and_flags() -> None:
    trace = TraceContext.parse(CALLER, "a=1")
    assert trace is not None
    assert (trace.trace_id, trace.span_id, trace.sampled) == (
        CALLER_TRACE,
        "00f067aa0ba902b7",
        True,
    )
    assert trace.metadata() == {TRACEPARENT_KEY: CALLER, TRACESTATE_KEY: "a=1"}
    assert TraceContext(CALLER).metadata() == {TRACEPARENT_KEY: CALLER}


def test_a_long_tracestate_loses_its_long_entries_then_its_last_ones() -> None:
    short = [f"v{i:02d}=" + "x" * 40 for i in range(20)]  # 44 bytes each
    long = "big=" + "y" * 200
    bounded = bounded_tracestate(",".join([short[0], long, *short[1:]]))
    assert len(bounded) <= MAX_TRACESTATE_BYTES
    assert bounded == ",".join(short[:11])  # 11 * 44 + 10 commas = 494
    assert bounded_tracestate("a=1, b=2") == "a=1,b=2"
    assert bounded_tracestate("a=\u00e9") == ""  # not printable ASCII: not kept


# --- where the context goes -----------------------------------------------------------


def test_the_record_carries_the_trace_context_as_w3c_and_cloudevents_headers() -> None:
    headers = dict(record_headers(TRACED))
    assert headers["traceparent"] == CALLER.encode()
    assert headers["tracestate"] == b"congo=t61rcWkgMzE"
    assert headers["ce_traceparent"] == CALLER.encode()
    assert headers["ce_tracestate"] == b"congo=t61rcWkgMzE"
    untraced = [name for name, _ in record_headers(EVENT)]
    assert not [name for name in untraced if "trace" in name]


@pytest.mark.parametrize("form", list(Form))
def test_every_form_of_the_document_has_the_trace_id(form: Form) -> None:
    document, _ = build_document(TRACED, form, why="test")
    assert document["trace_id"] == CALLER_TRACE
    assert document["traceparent"] == CALLER
    untraced, _ = build_document(EVENT, form, why="test")
    assert "trace_id" not in untraced
    assert "traceparent" not in untraced
    properties = index_mappings()["properties"]
    assert properties["trace_id"] == properties["traceparent"] == {"type": "keyword"}


def test_the_client_helpers_continue_the_trace_of_an_event(spans: InMemorySpanExporter) -> None:
    assert trace_context(TRACED) == TraceContext(CALLER, "congo=t61rcWkgMzE")
    assert trace_context(EVENT) is None
    assert trace_parent(EVENT) is None
    assert trace_link(EVENT) is None
    link = trace_link(TRACED)
    assert link is not None
    parent = trace_parent(TRACED)
    with tracing.span("handle", links=[link]):
        pass
    provider_tracer = tracing._State.tracer
    assert provider_tracer is not None
    with provider_tracer.start_as_current_span("child", context=parent):
        pass
    handle, child = spans.get_finished_spans()
    assert f"{handle.links[0].context.trace_id:032x}" == CALLER_TRACE
    assert handle.links[0].context.trace_state.get("congo") == "t61rcWkgMzE"
    assert f"{child.context.trace_id:032x}" == CALLER_TRACE
    assert child.parent is not None
    assert f"{child.parent.span_id:016x}" == "00f067aa0ba902b7"


# --- the server -----------------------------------------------------------------------


@pytest.fixture
async def store() -> AsyncIterator[tuple[InMemoryEventStorage, EventStoreClient]]:
    storage = InMemoryEventStorage()
    running = await start(
        ServerSettings(listen="127.0.0.1:0", auth_disabled=True), Components(storage)
    )
    async with EventStoreClient(f"127.0.0.1:{running.port}") as client:
        yield storage, client
    await running.stop(grace=0)


def _attributes(span: Any) -> Mapping[str, Any]:
    return dict(span.attributes or {})


async def test_an_append_continues_the_callers_trace_and_stores_its_context(
    store: tuple[InMemoryEventStorage, EventStoreClient], spans: InMemorySpanExporter
) -> None:
    storage, client = store
    parent = tracing.parent_of(TraceContext(CALLER, "congo=t61rcWkgMzE"))
    tracer = tracing._State.tracer
    assert tracer is not None
    with tracer.start_as_current_span("caller", context=parent):
        await client.append("o-1", "Order", [Event("Placed", {"n": 1})], ExpectedVersion.any())
    (rpc,) = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    (caller,) = [s for s in spans.get_finished_spans() if s.name == "caller"]
    assert rpc.name == "eventstore.v1.EventStore/Append"
    assert rpc.parent is not None
    assert rpc.parent.span_id == caller.context.span_id
    assert rpc.context.trace_id == int(CALLER_TRACE, 16)
    assert _attributes(rpc)["rpc.grpc.status_code"] == 0
    assert rpc.context.trace_state.get("congo") == "t61rcWkgMzE"
    (stored,) = await storage.read("o-1", 1, direction_forwards(), 10)
    trace = trace_context_of(stored.metadata)
    assert trace is not None
    assert trace.trace_id == CALLER_TRACE
    assert trace.span_id == f"{rpc.context.span_id:016x}"
    assert trace.tracestate == "congo=t61rcWkgMzE"
    # What a reader gets, and how it continues.
    (read,) = await client.read_all("o-1")
    assert trace_context(read) == trace


async def test_a_retry_traced_afresh_gets_the_original_result(
    store: tuple[InMemoryEventStorage, EventStoreClient], spans: InMemorySpanExporter
) -> None:
    """The stored context is the first attempt's; a retry (another context) is still the same
    append, not an event id reused for other content."""
    _, client = store
    event = Event("Placed", {"n": 1})
    first = await client.append("o-2", "Order", [event], ExpectedVersion.no_stream())
    with tracing.span("another caller"):
        again = await client.append("o-2", "Order", [event], ExpectedVersion.no_stream())
    assert again.first_version == first.first_version == 1
    (read,) = await client.read_all("o-2")
    assert trace_context(read) is not None


async def test_a_refused_call_is_not_a_server_error(
    store: tuple[InMemoryEventStorage, EventStoreClient], spans: InMemorySpanExporter
) -> None:
    _, client = store
    with pytest.raises(Exception, match="expected"):
        await client.append("o-3", "Order", [Event("Placed", {})], ExpectedVersion.exact(5))
    (rpc,) = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert _attributes(rpc)["rpc.grpc.status_code"] == 9  # FAILED_PRECONDITION
    assert rpc.status.is_unset


async def test_a_stream_has_one_span_current_while_it_reads(
    store: tuple[InMemoryEventStorage, EventStoreClient], spans: InMemorySpanExporter
) -> None:
    _, client = store
    await client.append(
        "o-4", "Order", [Event("Placed", {}) for _ in range(3)], ExpectedVersion.any()
    )
    spans.clear()
    assert len(await client.read_all("o-4")) == 3
    (rpc,) = spans.get_finished_spans()
    assert rpc.name == "eventstore.v1.EventStore/ReadAggregate"
    assert _attributes(rpc)["rpc.grpc.status_code"] == 0


async def test_off_nothing_is_recorded_or_stored(
    store: tuple[InMemoryEventStorage, EventStoreClient],
) -> None:
    storage, client = store
    assert not tracing.enabled()
    # Even a caller's traceparent is not taken over while the server does not trace.
    await client._stub.Append(  # raw, to send a traceparent without any SDK
        _append_request("o-5"), metadata=[("traceparent", CALLER)]
    )
    (stored,) = await storage.read("o-5", 1, direction_forwards(), 10)
    assert trace_context_of(stored.metadata) is None
    assert not [key for key in stored.metadata if key.startswith("$trace")]
    assert tracing.current() is None
    with tracing.span("nothing") as span:
        assert span is tracing.INVALID_SPAN
        assert not span.is_recording()


# --- the indexer's bulk ----------------------------------------------------------------


def test_a_bulk_span_links_to_the_appends_of_its_events(spans: InMemorySpanExporter) -> None:
    other = dataclasses.replace(
        TRACED,
        version=4,
        metadata={TRACEPARENT_KEY: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )
    items = [make_item(None, e, "idx", 1 << 20) for e in (TRACED, other, EVENT)]

    def send(body: bytes) -> dict[str, Any]:
        lines = body.splitlines()
        return {"errors": False, "items": [{"index": {"status": 201}}] * (len(lines) // 2)}

    writer = BulkWriter(send, lambda backoff: backoff, 1 << 20, 1 << 20)
    assert writer.write(items) == []
    (bulk,) = spans.get_finished_spans()
    assert bulk.name == "bulk"
    assert bulk.kind is SpanKind.CLIENT
    assert [f"{link.context.trace_id:032x}" for link in bulk.links] == [
        CALLER_TRACE,
        "0af7651916cd43dd8448eb211c80319c",
    ]
    assert _attributes(bulk)["db.operation.batch.size"] == 3


# --- settings --------------------------------------------------------------------------


def test_tracing_is_off_unless_asked_and_exports_by_http_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("EVENTSTORE_TRACING", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", raising=False)
    assert not load(TracingSettings).enabled
    monkeypatch.setenv("EVENTSTORE_TRACING", "otlp")
    assert load(TracingSettings).enabled
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL=grpc"):
        load(TracingSettings)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    assert load(TracingSettings).enabled
    monkeypatch.setenv("EVENTSTORE_TRACING", "jaeger")
    with pytest.raises(ConfigError, match="EVENTSTORE_TRACING"):
        load(TracingSettings)


# --- helpers ---------------------------------------------------------------------------


def direction_forwards() -> Direction:
    return Direction.FORWARDS


def _append_request(aggregate_id: str) -> pb.AppendRequest:
    return pb.AppendRequest(
        aggregate_id=aggregate_id,
        aggregate_type="Order",
        expected_version=expected_to_proto(ExpectedVersion.any()),
        events=[pb.EventData(event_type="Placed", data=json.dumps({}).encode())],
    )


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({}, "eventstore-indexer"),
        ({"OTEL_SERVICE_NAME": "orders-indexer"}, "orders-indexer"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attributes"}, "from-attributes"),
    ],
)
def test_configure_names_the_service_unless_the_operator_did(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], expected: str
) -> None:
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    tracing.configure("eventstore-indexer")
    try:
        assert tracing.enabled()
        assert tracing._State.owned.resource.attributes["service.name"] == expected
    finally:
        tracing.shutdown()  # nothing recorded: nothing to send
    assert not tracing.enabled()


def test_a_produce_span_is_the_calls_child_or_else_links_to_the_appends(
    spans: InMemorySpanExporter,
) -> None:
    """The request path sends inside the Append call; the relay (after a crash or an outage)
    and republish send outside any call, and link to the appends the events were stored in."""
    other = dataclasses.replace(
        TRACED,
        version=4,
        metadata={TRACEPARENT_KEY: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )
    relayed = _send_span("events.Order", [TRACED, other, EVENT])
    relayed.end()
    with tracing.span("Append") as call:
        sent = _send_span("events.Order", [TRACED])
        sent.end()
    by_name = {span.context.span_id: span for span in spans.get_finished_spans()}
    relay_span = by_name[relayed.get_span_context().span_id]
    assert relay_span.parent is None
    assert [f"{link.context.trace_id:032x}" for link in relay_span.links] == [
        CALLER_TRACE,
        "0af7651916cd43dd8448eb211c80319c",
    ]
    sent_span = by_name[sent.get_span_context().span_id]
    assert sent_span.parent is not None
    assert sent_span.parent.span_id == call.get_span_context().span_id
    assert not sent_span.links
    assert sent_span.kind is SpanKind.PRODUCER
    assert _attributes(sent_span)["messaging.destination.name"] == "events.Order"


@pytest.mark.parametrize("fails", [False, True])
async def test_a_produce_span_ends_when_kafka_settled_every_record(
    spans: InMemorySpanExporter, fails: bool
) -> None:
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[tuple[int, int]]] = [loop.create_future() for _ in range(2)]
    span = _send_span("events.Order", [TRACED, dataclasses.replace(TRACED, version=4)])
    _end_when_settled(span, _Delivery(futures))
    futures[1].set_result((2, 8))
    await asyncio.sleep(0)
    assert not spans.get_finished_spans()  # one record still on its way
    if fails:
        futures[0].set_exception(PublishFailed("refused"))
    else:
        futures[0].set_result((2, 7))
    await asyncio.sleep(0)
    (ended,) = spans.get_finished_spans()
    if fails:
        assert ended.status.status_code is StatusCode.ERROR
        assert "messaging.kafka.offset" not in _attributes(ended)
        assert futures[0].exception() is not None
    else:
        assert ended.status.is_unset
        assert _attributes(ended)["messaging.kafka.offset"] == 7
        assert _attributes(ended)["messaging.destination.partition.id"] == "2"
