"""OpenTelemetry tracing: off unless EVENTSTORE_TRACING=otlp, and then exported by OTLP/HTTP.

Off, every helper here returns at once with a shared non-recording span (`INVALID_SPAN`): no
context is extracted, attached or formatted, no attribute built. Callers build attributes
only when `span.is_recording()`. On, the SDK is configured by the standard OTEL_* variables
(endpoint, headers, service name, resource attributes, sampler, batch processor), as
operators of OpenTelemetry on Kubernetes expect; EVENTSTORE_TRACING only says whether.

The tracer lives here, not in OpenTelemetry's global provider: the global can be set once
per process, and the tests install an in-memory exporter and remove it again. Each process's
`main()` calls `configure` (never at import time) and `shutdown` on the way out, which
exports what is still buffered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import (
    INVALID_SPAN,
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
    TracerProvider,
    TraceState,
)
from opentelemetry.util.types import AttributeValue

from eventstore.domain.tracecontext import TraceContext

__all__ = [
    "INVALID_SPAN",
    "Link",
    "Span",
    "SpanKind",
    "StatusCode",
    "activate",
    "configure",
    "current",
    "enabled",
    "install",
    "link",
    "parent_of",
    "server_span",
    "set_error",
    "shutdown",
    "span",
    "span_context",
    "start_span",
    "uninstall",
]

_INSTRUMENTATION = "eventstore"


class _State:
    tracer: Tracer | None = None
    #: The SDK provider `configure` made (flushed and shut down by `shutdown`).
    owned: Any = None


class _NoSpan:
    """What `span` and `activate` return while tracing is off: enters as INVALID_SPAN (whose
    methods do nothing), shared by every caller."""

    def __enter__(self) -> Span:
        return INVALID_SPAN

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


_NO_SPAN = _NoSpan()


def configure(service_name: str) -> None:
    """Trace this process and export by OTLP over HTTP (OTEL_EXPORTER_OTLP_* say where).
    `service_name` applies unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES names one."""
    # Imported here: a process with tracing off never loads the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    # The sampler comes from OTEL_TRACES_SAMPLER(_ARG), parent-based always-on by default.
    provider = SdkTracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    install(provider)
    _State.owned = provider


def install(provider: TracerProvider) -> None:
    """Trace with `provider` (tests pass an SDK provider with an in-memory exporter)."""
    _State.tracer = provider.get_tracer(_INSTRUMENTATION)


def uninstall() -> None:
    """Tracing off again (tests)."""
    _State.tracer = None


def shutdown() -> None:
    """Export what is buffered and stop (a process's last step)."""
    owned, _State.owned = _State.owned, None
    _State.tracer = None
    if owned is not None:
        owned.shutdown()


def enabled() -> bool:
    return _State.tracer is not None


def span(
    name: str,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, AttributeValue] | None = None,
    links: Sequence[Link] | None = None,
) -> contextlib.AbstractContextManager[Span]:
    """A span around a block, current inside it (so spans started inside are its children);
    an exception leaving the block marks it as an error."""
    tracer = _State.tracer
    if tracer is None:
        return _NO_SPAN
    return tracer.start_as_current_span(name, kind=kind, attributes=attributes, links=links)


def start_span(
    name: str,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, AttributeValue] | None = None,
    links: Sequence[Link] | None = None,
) -> Span:
    """A span the caller ends (`span.end()`), e.g. from a delivery callback; a child of the
    current span, not current itself."""
    tracer = _State.tracer
    if tracer is None:
        return INVALID_SPAN
    return tracer.start_span(name, kind=kind, attributes=attributes, links=links)


def server_span(
    name: str,
    carrier: Iterable[tuple[str, str | bytes]] | None,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Span:
    """The span of a call received, the child of the caller's context when its metadata
    carries one (`traceparent`, per OTEL_PROPAGATORS); the caller activates and ends it."""
    tracer = _State.tracer
    if tracer is None:
        return INVALID_SPAN
    # Only the propagators' own fields: the rest (an API key among them) is none of theirs.
    fields = propagate.get_global_textmap().fields
    headers = {k: v for k, v in carrier or () if k in fields and isinstance(v, str)}
    parent = propagate.extract(headers) if headers else None
    return tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)


def activate(span: Span) -> contextlib.AbstractContextManager[Any]:
    """Make `span` current for a block without ending it, and without recording the
    exceptions crossing it (a call's span gets the status its answer has instead)."""
    if span is INVALID_SPAN:
        return _NO_SPAN
    return trace.use_span(span, record_exception=False, set_status_on_exception=False)


def current() -> TraceContext | None:
    """The current span's context in W3C form (None: tracing off, or no span)."""
    if _State.tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    traceparent = (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
    )
    return TraceContext.parse(traceparent, context.trace_state.to_header())


def span_context(trace_context: TraceContext) -> SpanContext:
    """A stored context as OpenTelemetry's (remote: it was recorded elsewhere)."""
    return SpanContext(
        trace_id=int(trace_context.trace_id, 16),
        span_id=int(trace_context.span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(int(trace_context.traceparent[53:55], 16)),
        trace_state=TraceState.from_header([trace_context.tracestate])
        if trace_context.tracestate
        else TraceState(),
    )


def link(trace_context: TraceContext) -> Link:
    return Link(span_context(trace_context))


def parent_of(trace_context: TraceContext) -> Any:
    """An OpenTelemetry Context whose span is the stored one: pass as `context=` to start a
    child span of it."""
    return trace.set_span_in_context(NonRecordingSpan(span_context(trace_context)))


def set_error(span: Span, description: str) -> None:
    if span.is_recording():
        span.set_status(Status(StatusCode.ERROR, description))
