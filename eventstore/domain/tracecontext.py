"""The W3C trace context an event carries: where the append that stored it was traced.

Pure rules, no tracing library: the server stamps the append's context into each event's
metadata under reserved keys (clients cannot set `$` keys, so it cannot be forged), and every
place the event goes reads it back from there: the Kafka record's headers, the OpenSearch
document, a subscriber. An event appended while tracing was off (or by an untraced caller
whose append the server did not trace) simply has none.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from eventstore.domain.events import AppendRequest

#: The append's `traceparent` (W3C Trace Context, version 00: 55 characters).
TRACEPARENT_KEY = "$traceparent"
#: Its `tracestate`, when the caller sent one (vendor entries; at most MAX_TRACESTATE_BYTES).
TRACESTATE_KEY = "$tracestate"
TRACEPARENT_BYTES = 55
#: W3C asks platforms to propagate at least 512 characters of tracestate and lets them drop
#: entries beyond; keeping that bound keeps every event's size bounded (sizes.py).
MAX_TRACESTATE_BYTES = 512
#: Entries longer than this are the first to go when the tracestate is too long (W3C 3.3.1.5).
_LONG_ENTRY = 128

# version 00, trace id, parent id, flags; an all-zero trace or parent id is invalid.
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_TRACESTATE_CHARS = re.compile(r"[\x20-\x7e]*")


@dataclass(frozen=True)
class TraceContext:
    """A W3C trace context: `traceparent` (checked) and `tracestate` ("" if none)."""

    traceparent: str
    tracestate: str = ""

    @property
    def trace_id(self) -> str:
        """The 32 hex digits every span of the trace shares."""
        return self.traceparent[3:35]

    @property
    def span_id(self) -> str:
        return self.traceparent[36:52]

    @property
    def sampled(self) -> bool:
        return bool(int(self.traceparent[53:55], 16) & 1)

    @classmethod
    def parse(cls, traceparent: str, tracestate: str = "") -> TraceContext | None:
        """None unless `traceparent` is a valid version-00 header; the tracestate is bounded
        (`bounded_tracestate`)."""
        if not _TRACEPARENT.fullmatch(traceparent):
            return None
        return cls(traceparent, bounded_tracestate(tracestate))

    def metadata(self) -> dict[str, str]:
        entries = {TRACEPARENT_KEY: self.traceparent}
        if self.tracestate:
            entries[TRACESTATE_KEY] = self.tracestate
        return entries


def bounded_tracestate(tracestate: str) -> str:
    """`tracestate` cut to MAX_TRACESTATE_BYTES the way W3C allows: whole entries, the long
    ones (over 128 characters) first, then from the end. Not printable ASCII: dropped."""
    if not _TRACESTATE_CHARS.fullmatch(tracestate):
        return ""
    entries = [entry.strip() for entry in tracestate.split(",") if entry.strip()]
    if len(",".join(entries)) <= MAX_TRACESTATE_BYTES:
        return ",".join(entries)
    entries = [entry for entry in entries if len(entry) <= _LONG_ENTRY]
    while entries and len(",".join(entries)) > MAX_TRACESTATE_BYTES:
        entries.pop()
    return ",".join(entries)


def trace_context_of(metadata: Mapping[str, str]) -> TraceContext | None:
    """The trace context stored with an event (None: it was appended untraced)."""
    traceparent = metadata.get(TRACEPARENT_KEY)
    if traceparent is None:
        return None
    return TraceContext.parse(traceparent, metadata.get(TRACESTATE_KEY, ""))


def record_trace_context(request: AppendRequest, trace: TraceContext) -> AppendRequest:
    """Stamp every event of the append with the context it was appended in. Like the
    principal, clients cannot forge it: validation refuses their `$` keys."""
    entries = trace.metadata()
    return replace(
        request,
        events=tuple(
            replace(event, metadata={**event.metadata, **entries}) for event in request.events
        ),
    )
