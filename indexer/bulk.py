"""Bulk indexing of one consumed batch, so that no document can wedge the indexer.

* Requests are bounded by bytes up front (`max_bulk_bytes`; a document larger than that goes
  alone), not only by the number of records consumed together.
* A request OpenSearch refuses as too large (413), or sheds whole (429: its indexing-pressure
  limit, a circuit breaker), or that times out, is retried in halves, recursively. A single
  document still too large is retried in the minimal form.
* A document refused for its content (400) is retried in a reduced form (`Form.STORED`: no
  searchable copies), then in the minimal one (ids, types, version, time, content type and the
  note saying why); only a minimal document refused too is returned for the dead-letter topic.
* Anything else (OpenSearch down, item-level 429/5xx) is retried with backoff, as before.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import structlog
from opensearchpy.exceptions import ConnectionError as OpenSearchConnectionError
from opensearchpy.exceptions import ConnectionTimeout, TransportError
from prometheus_client import Counter, Histogram

from eventstore import tracing
from eventstore.domain.events import RecordedEvent
from eventstore.domain.tracecontext import trace_context_of
from eventstore.search.documents import Form, build_document, document_id

log = structlog.get_logger("indexer")

INDEXED = Counter("eventstore_indexer_indexed", "Documents written")
BULK_FAILURES = Counter(
    "eventstore_indexer_bulk_failures", "Bulk requests that failed and were retried"
)
SPLITS = Counter(
    "eventstore_indexer_bulk_splits", "Bulk requests retried in halves (413, 429, timeout)"
)
REDUCED = Counter(
    "eventstore_indexer_reduced_documents",
    "Documents OpenSearch refused, indexed again in a reduced form",
    ["form"],
)
BULK_BYTES = Histogram(
    "eventstore_indexer_bulk_request_bytes",
    "Size of the bulk requests sent",
    buckets=[2**16, 2**18, 2**20, 2**22, 2**23, 2**24, 2**25, 2**27],
)

#: Item statuses that say "not this document, ever", as opposed to "not now".
CONTENT_REFUSALS = frozenset({400, 413})
INITIAL_BACKOFF_S = 0.1


@dataclass(frozen=True)
class Item:
    """One event's bulk lines (action and document) and where it came from."""

    source: Any
    event: RecordedEvent
    index: str
    form: Form
    lines: bytes

    @property
    def size(self) -> int:
        return len(self.lines)


@dataclass(frozen=True)
class Refused:
    item: Item
    reason: str


def make_item(
    source: Any,
    event: RecordedEvent,
    index: str,
    max_document_bytes: int,
    form: Form = Form.FULL,
    why: str = "",
) -> Item:
    encoded = build_document(event, form, why, max_document_bytes)[1]
    _id = document_id(event.aggregate_id, event.version)
    action = json.dumps({"index": {"_index": index, "_id": _id}}).encode()
    return Item(source, event, index, form, action + b"\n" + encoded + b"\n")


def _bulk_span(group: list[Item], body: bytes) -> AbstractContextManager[tracing.Span]:
    """The span of one bulk request, linked to the appends of the events it indexes (each a
    trace of its own; a span holds OTEL_SPAN_LINK_COUNT_LIMIT links, 128 by default)."""
    if not tracing.enabled():
        return tracing.span("bulk")
    # dict.fromkeys: each append once, in the order of the events.
    contexts = dict.fromkeys(
        c for item in group if (c := trace_context_of(item.event.metadata)) is not None
    )
    return tracing.span(
        "bulk",
        tracing.SpanKind.CLIENT,
        {
            "db.system.name": "opensearch",
            "db.operation.name": "bulk",
            "db.operation.batch.size": len(group),
            "http.request.body.size": len(body),
        },
        links=[tracing.link(c) for c in contexts],
    )


def refusal_reason(result: Mapping[str, Any]) -> str:
    """A short reason from a bulk item's error (type, reason, and what caused it)."""
    error = result.get("error")
    if not isinstance(error, Mapping):
        return f"status {result.get('status')}: {error}"[:300]
    text = f"{error.get('type')}: {error.get('reason')}"
    cause = error.get("caused_by")
    if isinstance(cause, Mapping):
        text += f" (caused by {cause.get('type')}: {cause.get('reason')})"
    return text[:300]


def chunks(items: Iterable[Item], max_bytes: int) -> Iterable[list[Item]]:
    """Consecutive items in requests of at most `max_bytes` (one larger item goes alone)."""
    chunk: list[Item] = []
    size = 0
    for item in items:
        if chunk and size + item.size > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += item.size
    if chunk:
        yield chunk


def _halves(group: list[Item]) -> list[list[Item]]:
    middle = len(group) // 2
    return [group[:middle], group[middle:]]


class BulkWriter:
    """Writes items to OpenSearch until each is indexed (possibly reduced) or refused for good.

    `send` posts one bulk body and returns the response; `wait` sleeps for a backoff and
    returns the next one (the indexer's keeps its consumer in the group meanwhile)."""

    def __init__(
        self,
        send: Callable[[bytes], Mapping[str, Any]],
        wait: Callable[[float], float],
        max_bulk_bytes: int,
        max_document_bytes: int,
    ) -> None:
        self._send = send
        self._wait = wait
        self.max_bulk_bytes = max_bulk_bytes
        self.max_document_bytes = max_document_bytes
        #: Requests sent and the largest one, for logs and tests.
        self.requests = 0
        self.largest_request = 0

    def write(self, items: Iterable[Item]) -> list[Refused]:
        """Index every item; return the ones even the minimal form could not be indexed as.
        Items are consumed lazily, one request's worth at a time."""
        refused: list[Refused] = []
        for chunk in chunks(items, self.max_bulk_bytes):
            refused += self._write_chunk(chunk)
        return refused

    def _reduce(self, item: Item, form: Form, why: str) -> Item:
        REDUCED.labels(form.name.lower()).inc()
        log.warning(
            "document refused; indexing it in a reduced form",
            event_id=str(item.event.event_id),
            aggregate_id=item.event.aggregate_id,
            version=item.event.version,
            form=form.name.lower(),
            reason=why,
        )
        return make_item(item.source, item.event, item.index, self.max_document_bytes, form, why)

    def _post(self, group: list[Item], body: bytes) -> Mapping[str, Any]:
        self.requests += 1
        self.largest_request = max(self.largest_request, len(body))
        BULK_BYTES.observe(len(body))
        with _bulk_span(group, body) as span:
            response = self._send(body)
            if span.is_recording() and response.get("errors"):
                span.set_attribute("eventstore.bulk.item_errors", True)
            return response

    def _write_chunk(self, chunk: list[Item]) -> list[Refused]:
        refused: list[Refused] = []
        queue: deque[list[Item]] = deque([chunk])
        backoff = INITIAL_BACKOFF_S
        while queue:
            group = queue.popleft()
            body = b"".join(item.lines for item in group)
            try:
                response = self._post(group, body)
            except (OpenSearchConnectionError, TransportError) as exc:
                status = getattr(exc, "status_code", None)
                too_large = status == 413
                shed = status == 429 or isinstance(exc, ConnectionTimeout)
                if too_large or (shed and len(group) > 1):
                    SPLITS.inc()
                    log.warning(
                        "bulk request refused as a whole; retrying it in halves",
                        status=status,
                        error=str(exc)[:200],
                        documents=len(group),
                        bytes=len(body),
                    )
                    if shed:
                        BULK_FAILURES.inc()
                        backoff = self._wait(backoff)
                    if len(group) > 1:
                        queue.extendleft(reversed(_halves(group)))
                    elif group[0].form is Form.MINIMAL:
                        refused.append(Refused(group[0], f"too large for OpenSearch: {exc}"[:300]))
                    else:
                        why = f"the document of {group[0].size} bytes is too large (HTTP 413)"
                        queue.appendleft([self._reduce(group[0], Form.MINIMAL, why)])
                    continue
                BULK_FAILURES.inc()
                log.warning(
                    "bulk failed; retrying the same batch", error=str(exc)[:200], backoff_s=backoff
                )
                backoff = self._wait(backoff)
                queue.appendleft(group)
                continue
            again: list[Item] = []
            retry: list[Item] = []
            for item, entry in zip(group, response["items"], strict=True):
                result = entry.get("index") or next(iter(entry.values()))
                status = int(result.get("status", 500))
                if status < 300:
                    INDEXED.inc()
                elif status not in CONTENT_REFUSALS:
                    retry.append(item)
                elif item.form is Form.MINIMAL:
                    reason = f"rejected by OpenSearch: {json.dumps(result.get('error'))}"
                    refused.append(Refused(item, reason[:500]))
                else:
                    why = f"refused by OpenSearch: {refusal_reason(result)}"
                    again.append(self._reduce(item, Form(item.form + 1), why))
            if again:
                queue.appendleft(again)
            if retry:
                BULK_FAILURES.inc()
                backoff = self._wait(backoff)
                queue.append(retry)
            elif not again:
                backoff = INITIAL_BACKOFF_S
        return refused
