"""Tracing on the real stack (issue #18): an append made in a caller's trace is traced through
the server (RPC span, its child), Cassandra (the LWT batch) and Kafka (the produce), all in
the caller's trace; the Kafka record and the OpenSearch document carry that context, and the
indexer's bulk span links to it. Off, there are no spans, headers or fields.

Server and indexer run in this process, so the in-memory exporter (`spans`) sees theirs."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from eventstore import tracing
from eventstore.client import Event, EventStoreClient, ExpectedVersion, trace_context
from eventstore.config import KafkaSettings, OpenSearchSettings, ServerSettings
from eventstore.domain.tracecontext import TraceContext
from eventstore.search.setup import make_client
from eventstore.server import RunningServer
from indexer.config import IndexerSettings
from tests.integration.test_cloudevents import as_cloudevent
from tests.integration.test_indexer import answered
from tests.integration.test_indexer_limits import InProcessIndexer
from tests.integration.test_publication import server_process
from tests.support import header_map, read_topic, unique

pytestmark = pytest.mark.integration

CALLER = TraceContext("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "rojo=00f067aa")


async def finished(
    spans: InMemorySpanExporter, wanted: Callable[[ReadableSpan], bool], timeout_s: float = 30
) -> ReadableSpan:
    """The first finished span `wanted` picks, once there is one (a produce span ends when
    Kafka confirms, a bulk span when OpenSearch answers)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [span for span in spans.get_finished_spans() if wanted(span)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, "no such span"
        await asyncio.sleep(0.1)


def document_of(settings: OpenSearchSettings, aggregate_id: str, timeout_s: float = 60) -> Any:
    """The indexed document of the aggregate's first event, once it is searchable."""
    client = make_client(settings)
    deadline = time.monotonic() + timeout_s
    try:
        while True:

            def ask() -> Any:
                client.indices.refresh(index=f"{settings.index_prefix}-*", ignore_unavailable=True)
                return client.search(
                    index=settings.alias,
                    body={"query": {"term": {"aggregate_id": aggregate_id}}},
                    ignore_unavailable=True,
                    allow_no_indices=True,
                )

            hits = answered(ask)["hits"]["hits"]
            if hits:
                return hits[0]["_source"]
            assert time.monotonic() < deadline, "never indexed"
            time.sleep(0.3)
    finally:
        client.close()


@pytest.fixture
async def indexer(
    kafka_settings: KafkaSettings, opensearch_settings: OpenSearchSettings
) -> AsyncIterator[InProcessIndexer]:
    running = InProcessIndexer(
        IndexerSettings(
            group_id=unique("indexer"),
            kafka=kafka_settings,
            opensearch=opensearch_settings,
            state_interval_s=0.5,
            max_backoff_s=1.0,
        )
    )
    running.start()
    yield running
    await asyncio.to_thread(running.stop)


async def test_an_append_is_one_trace_from_the_caller_to_kafka_and_opensearch(
    spans: InMemorySpanExporter,
    server: RunningServer,
    client: EventStoreClient,
    kafka_settings: KafkaSettings,
    opensearch_settings: OpenSearchSettings,
    indexer: InProcessIndexer,
) -> None:
    aggregate_type = unique("Traced").replace("-", "")
    aggregate_id = unique("order")
    tracer = tracing._State.tracer
    assert tracer is not None
    # The caller: its own span, in a trace that came from further up (a tracestate included).
    with tracer.start_as_current_span("caller", context=tracing.parent_of(CALLER)) as caller:
        await client.append(
            aggregate_id,
            aggregate_type,
            [Event("Placed", {"n": 1}), Event("Paid", {"n": 2})],
            ExpectedVersion.no_stream(),
        )
    trace_id = caller.get_span_context().trace_id
    assert f"{trace_id:032x}" == CALLER.trace_id

    rpc = await finished(spans, lambda s: s.name == "eventstore.v1.EventStore/Append")
    assert rpc.kind is SpanKind.SERVER
    assert rpc.parent is not None
    assert rpc.parent.span_id == caller.get_span_context().span_id
    assert rpc.context.trace_id == trace_id
    batch = await finished(
        spans,
        lambda s: s.name == "BATCH events" and s.context.trace_id == trace_id,
    )
    assert batch.kind is SpanKind.CLIENT
    assert batch.parent is not None
    assert batch.parent.span_id == rpc.context.span_id
    assert dict(batch.attributes or {})["eventstore.applied"] is True
    topic = kafka_settings.topic(aggregate_type)
    produce = await finished(spans, lambda s: s.name == f"send {topic}")
    assert produce.kind is SpanKind.PRODUCER
    assert produce.context.trace_id == trace_id
    assert produce.parent is not None
    assert produce.parent.span_id == rpc.context.span_id
    assert dict(produce.attributes or {})["messaging.batch.message_count"] == 2
    assert "messaging.kafka.offset" in dict(produce.attributes or {})

    # What is stored with the events: the RPC span's context (its tracestate the caller's).
    stored = await client.read_all(aggregate_id)
    contexts = {trace_context(event) for event in stored}
    assert contexts == {
        TraceContext(f"00-{trace_id:032x}-{rpc.context.span_id:016x}-01", CALLER.tracestate)
    }
    (appended,) = contexts
    assert appended is not None
    # A subscriber gets it too, to continue the trace (README: trace_link, trace_parent).
    async for message in client.subscribe(aggregate_id=aggregate_id):
        assert message.event is not None
        assert trace_context(message.event) == appended
        break

    records = await asyncio.to_thread(read_topic, kafka_settings.bootstrap, topic, 2)
    assert len(records) == 2
    for record in records:
        headers = header_map(record)
        assert headers["traceparent"] == headers["ce_traceparent"] == appended.traceparent.encode()
        assert headers["tracestate"] == CALLER.tracestate.encode()
        # A CloudEvents SDK shows it as the distributed-tracing extension's attributes.
        cloudevent = as_cloudevent(record)
        assert cloudevent.get_extension("traceparent") == appended.traceparent
        assert cloudevent.get_extension("tracestate") == CALLER.tracestate

    document = await asyncio.to_thread(document_of, opensearch_settings, aggregate_id)
    assert document["trace_id"] == CALLER.trace_id
    assert document["traceparent"] == appended.traceparent
    bulk = await finished(
        spans,
        lambda s: s.name == "bulk" and any(link.context.trace_id == trace_id for link in s.links),
    )
    assert bulk.kind is SpanKind.CLIENT
    (link,) = [link for link in bulk.links if link.context.trace_id == trace_id]
    assert link.context.span_id == rpc.context.span_id
    assert bulk.context.trace_id != trace_id  # its own trace, linked to the append's


async def test_off_there_are_no_spans_headers_or_fields(
    server: RunningServer,
    client: EventStoreClient,
    kafka_settings: KafkaSettings,
    opensearch_settings: OpenSearchSettings,
    indexer: InProcessIndexer,
) -> None:
    assert not tracing.enabled()
    aggregate_type = unique("Untraced").replace("-", "")
    aggregate_id = unique("order")
    # A caller that sends a traceparent anyway: a server that does not trace ignores it.
    client._metadata = (("traceparent", CALLER.traceparent),)
    await client.append(aggregate_id, aggregate_type, [Event("Placed", {"n": 1})])
    (event,) = await client.read_all(aggregate_id)
    assert trace_context(event) is None
    assert not [key for key in event.metadata if key.startswith("$")]
    (record,) = await asyncio.to_thread(
        read_topic, kafka_settings.bootstrap, kafka_settings.topic(aggregate_type), 1
    )
    assert not [name for name in header_map(record) if "trace" in name]
    document = await asyncio.to_thread(document_of, opensearch_settings, aggregate_id)
    assert "trace_id" not in document
    assert "traceparent" not in document


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace endpoint on loopback that keeps what it is sent."""

    requests: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        _Collector.requests.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


async def test_the_server_process_exports_its_spans_by_otlp(
    server_settings: ServerSettings, tmp_path: Path
) -> None:
    """`python -m eventstore.server` with EVENTSTORE_TRACING=otlp and the standard variables:
    the caller's traceparent is the parent of the Append span, and what is buffered at SIGTERM
    is exported before the process ends."""
    collector = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    proc = server_process(server_settings, tmp_path)
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_SAMPLER"):
        proc.env.pop(name, None)
    proc.env.update(
        EVENTSTORE_TRACING="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.server_address[1]}",
    )
    aggregate_type = unique("Exported").replace("-", "")
    try:
        await proc.start()
        async with EventStoreClient(proc.address) as client:
            client._metadata = (("traceparent", CALLER.traceparent),)  # an untraced-here caller
            await client.append(unique("order"), aggregate_type, [Event("Placed", {"n": 1})])
        await proc.stop()
    finally:
        collector.shutdown()
        collector.server_close()
    assert proc.process is not None
    assert proc.process.returncode == 0, (tmp_path / "server.log").read_text()
    exported = []
    for path, body in _Collector.requests:
        assert path == "/v1/traces"
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            assert attributes["service.name"] == "eventstore-server"
            exported += [s for scope in resource_spans.scope_spans for s in scope.spans]
    in_trace = {s.name: s for s in exported if s.trace_id.hex() == CALLER.trace_id}
    topic = server_settings.kafka.topic(aggregate_type)
    assert {"eventstore.v1.EventStore/Append", "BATCH events", f"send {topic}"} <= set(in_trace)
    assert in_trace["eventstore.v1.EventStore/Append"].parent_span_id.hex() == CALLER.span_id
