"""The largest events the store accepts, built to check size bounds against real encodings."""

from __future__ import annotations

import itertools
import os
import unicodedata
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

from eventstore.domain.access import PRINCIPAL_KEY
from eventstore.domain.events import MAX_VERSION, ExpectedVersion, RecordedEvent
from eventstore.domain.tracecontext import MAX_TRACESTATE_BYTES, TraceContext
from eventstore.domain.validation import (
    Limits,
    RawAppend,
    RawEvent,
    is_reserved_key,
    validate_append,
)

LATEST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
#: The trace context the server stamps, at its longest: a tracestate of exactly 512 bytes.
LONGEST_TRACE = TraceContext(
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "vendor=" + "x" * (MAX_TRACESTATE_BYTES - len("vendor=")),
)
#: A 4-byte UTF-8 character that media type parameters may hold.
WIDE = "\U0001f600"


def wide_event_id(n: int) -> str:
    """The longest event id spelling validation reads, in 4-byte digits (uuid.UUID reads any
    Unicode digit): MATHEMATICAL BOLD DIGIT ONE, and `n` (0..9) at the end."""
    one, last = "\U0001d7cf", chr(0x1D7CE + n)
    return "urn:uuid:" + "-".join(one * size for size in (8, 4, 4, 4, 11)) + last


def _allowed(text: str) -> bool:
    return not is_reserved_key(text) and not any(unicodedata.category(ch) == "Cc" for ch in text)


def short_keys() -> Iterator[str]:
    """Valid, distinct metadata keys, shortest (in UTF-8 bytes) first."""
    printable = [chr(c) for c in range(0x20, 0x7F)]
    yield from (c for c in printable if _allowed(c))
    yield from (a + b for a in printable for b in printable if _allowed(a + b))
    yield from (c for c in map(chr, range(0x80, 0x800)) if _allowed(c))
    yield from (a + b + c for a in printable for b in printable for c in printable if _allowed(a))


def metadata_heavy(counted: int, limits: Limits) -> dict[str, str]:
    """Metadata of exactly `counted` bytes (keys and values) that encodes to nearly the most
    bytes: every entry the limit allows (each adds framing), and the bytes beyond the shortest
    keys spread evenly over the values (long values take long length varints; keys of 128
    bytes or more would add a byte per entry, which the bound covers too)."""
    keys: list[str] = []
    left = counted
    for key in itertools.islice(short_keys(), limits.max_metadata_entries):
        if len(key.encode()) > left:
            break
        keys.append(key)
        left -= len(key.encode())
    share, extra = divmod(left, len(keys)) if keys else (0, 0)
    return {key: "v" * (share + (i < extra)) for i, key in enumerate(keys)}


def content_type(limits: Limits) -> str:
    return "a/b;" + WIDE * (limits.max_type_name_length - 4)


def raw_event(limits: Limits, heavy_metadata: bool, event_id: str = "") -> RawEvent:
    """An event whose counted bytes (type + data + metadata) are exactly the per-event limit."""
    counted = min(limits.max_event_bytes, limits.max_append_bytes)
    event_type = "E"
    budget = counted - len(event_type)
    metadata = metadata_heavy(budget, limits) if heavy_metadata else {}
    used = sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
    data = os.urandom(budget - used)  # incompressible
    return RawEvent(event_id, event_type, data, content_type(limits), metadata)


def recorded(limits: Limits, heavy_metadata: bool) -> RecordedEvent:
    """The event as the store records and publishes it, every field at its largest."""
    raw = RawAppend(
        # Every byte percent-encoded in the record's ce_source header, so three bytes there.
        aggregate_id="%" * limits.max_aggregate_id_bytes,
        aggregate_type="T" * limits.max_type_name_length,
        expected=ExpectedVersion.any(),
        events=[raw_event(limits, heavy_metadata)],
    )
    (event,) = validate_append(raw, limits).events  # it is accepted
    return RecordedEvent(
        event_id=uuid.uuid4(),
        aggregate_id=raw.aggregate_id,
        aggregate_type=raw.aggregate_type,
        version=MAX_VERSION,
        event_type=event.event_type,
        data=event.data,
        content_type=event.content_type,
        metadata={**event.metadata, PRINCIPAL_KEY: "p" * 128, **LONGEST_TRACE.metadata()},
        recorded_at=LATEST,
    )
