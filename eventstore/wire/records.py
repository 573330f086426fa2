"""The Kafka record of an event: what other services consume (see README), and its size.

Key = the aggregate id (partitioned as Kafka's Java clients do), value = the serialized
eventstore.v1.Event, headers naming the event: ours, the CloudEvents attributes of the
Kafka protocol binding's binary content mode (see `record_headers`), and the W3C trace context
the event was appended in, if it was traced."""

from __future__ import annotations

import math
from datetime import UTC
from urllib.parse import quote

from eventstore.domain.events import MAX_VERSION, RecordedEvent
from eventstore.domain.tracecontext import (
    MAX_TRACESTATE_BYTES,
    TRACEPARENT_BYTES,
    trace_context_of,
)
from eventstore.domain.validation import Limits
from eventstore.sizes import max_event_bytes, varint_size
from eventstore.v1 import eventstore_pb2 as pb
from eventstore.wire.events import event_from_proto, event_to_proto

#: Kafka's default max.message.bytes (broker and topic); topics we size never go below it
#: unless EVENTSTORE_KAFKA_MAX_MESSAGE_BYTES does.
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
#: Record batch v2 header: base offset, length, leader epoch, magic, CRC, attributes, last
#: offset delta, first and max timestamp, producer id and epoch, base sequence, record count.
RECORD_BATCH_OVERHEAD = 61
#: Per record, every varint at its largest: length, attributes, timestamp delta, offset delta,
#: key length, value length, header count (librdkafka's RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD,
#: which its produce() adds to key + value + headers and compares with message.max.bytes).
RECORD_OVERHEAD = 36


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's Java clients (and our producer, 'murmur2_random') pick for a key."""
    seed, m, r = 0x9747B28C, 0x5BD1E995, 24
    length = len(key)
    h = (seed ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(key[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = length % 4
    base = length - tail
    if tail == 3:
        h ^= key[base + 2] << 16
    if tail >= 2:
        h ^= key[base + 1] << 8
    if tail >= 1:
        h ^= key[base]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


def record_value(event: RecordedEvent) -> bytes:
    return event_to_proto(event).SerializeToString()


def decode_event(value: bytes) -> RecordedEvent:
    """A record value as an event. Raises DecodeError, or ValueError for a bad event id."""
    message = pb.Event()
    message.ParseFromString(value)
    return event_from_proto(message)


def record_timestamp(event: RecordedEvent) -> int:
    """The record's timestamp (ms): the event's recorded_at, not when it was sent, so that a
    subscription from a time finds its place (offsets_for_times) also among events the relay
    or a replay publishes late."""
    return math.floor(event.recorded_at.timestamp() * 1000)


#: The CloudEvents specification the `ce_` headers follow.
CLOUDEVENTS_SPECVERSION = "1.0"
#: The media type of the record value. In binary content mode the value IS the CloudEvent's
#: data and the `content-type` header is its `datacontenttype`; our value is the protobuf
#: envelope, so this names the envelope (IANA's application/protobuf), never the type of the
#: event's own data (the `content_type` header and the envelope's field say that).
RECORD_CONTENT_TYPE = "application/protobuf"
#: `dataschema`: the type URL of the envelope message, as the CloudEvents protobuf format asks
#: for protobuf data, with its scheme written out: `dataschema` must be an absolute URI, and a
#: type URL may have an https scheme (google/protobuf/any.proto). Its last path segment is the
#: full message name, as in any type URL.
RECORD_DATASCHEMA = f"https://type.googleapis.com/{pb.Event.DESCRIPTOR.full_name}"
#: The first segment of every `ce_source`: what kind of producer this is.
SOURCE_ROOT = "/eventstore"


def _path_segment(text: str) -> str:
    """`text` as one URI path segment: every byte outside RFC 3986's unreserved characters
    percent-encoded (`/` too, so an id cannot add segments; `%` too, so no two texts encode
    alike)."""
    segment = quote(text, safe="")
    if segment in (".", ".."):
        # A segment "." or ".." would be removed, and the aggregate with it, by reference
        # resolution (RFC 3986 5.2.4: urljoin, java.net.URI.resolve); encoded, those keep it.
        # (WHATWG URL parsers drop even %2E: compare sources as strings, as CloudEvents does.)
        segment = segment.replace(".", "%2E")
    return segment


def cloudevents_source(aggregate_type: str, aggregate_id: str) -> str:
    """`ce_source`: the aggregate the event happened to, `/eventstore/<type>/<id>`.

    Per aggregate, not per store or type, because CloudEvents requires `source` + `id` to be
    unique per distinct event and our event ids are unique only within an aggregate
    (docs/architecture.md, Indexing). The type comes first so that a prefix names all
    aggregates of a type; aggregate ids are unique store-wide, so the type adds no uniqueness.
    """
    return f"{SOURCE_ROOT}/{_path_segment(aggregate_type)}/{_path_segment(aggregate_id)}"


def cloudevents_time(event: RecordedEvent) -> str:
    """`ce_time`: recorded_at in RFC 3339, UTC ("Z"), always with microseconds (the precision
    of the value's recorded_at) and a four-digit year."""
    return (
        event.recorded_at.astimezone(UTC).replace(tzinfo=None).isoformat("T", "microseconds") + "Z"
    )


def record_headers(event: RecordedEvent) -> list[tuple[str, str | bytes | None]]:
    """Our headers (which consumers read), then the CloudEvents v1.0 attributes as the Kafka
    protocol binding's binary content mode maps them: `ce_<attribute>`, and `content-type` for
    `datacontenttype`. The value stays the protobuf envelope (see RECORD_CONTENT_TYPE)."""
    return [
        ("event_id", str(event.event_id).encode()),
        ("event_type", event.event_type.encode()),
        ("aggregate_type", event.aggregate_type.encode()),
        ("version", str(event.version).encode()),
        ("content_type", event.content_type.encode()),
        ("ce_specversion", CLOUDEVENTS_SPECVERSION.encode()),
        ("ce_id", str(event.event_id).encode()),
        ("ce_source", cloudevents_source(event.aggregate_type, event.aggregate_id).encode()),
        ("ce_type", event.event_type.encode()),
        ("ce_time", cloudevents_time(event).encode()),
        ("ce_subject", event.aggregate_id.encode()),
        ("ce_dataschema", RECORD_DATASCHEMA.encode()),
        ("content-type", RECORD_CONTENT_TYPE.encode()),
        *_trace_headers(event),
    ]


def _trace_headers(event: RecordedEvent) -> list[tuple[str, str | bytes | None]]:
    """The append's W3C trace context, if it was traced, twice: `traceparent`/`tracestate`
    are what OpenTelemetry's Kafka instrumentations (and any W3C propagator over the record's
    headers) extract; `ce_traceparent`/`ce_tracestate` are the CloudEvents distributed-tracing
    extension in binary mode, so a CloudEvents SDK shows the event's `traceparent` attribute.
    Both carry the context the event was appended in (the one stored with it), however late
    the record is sent (the relay, a republish)."""
    trace = trace_context_of(event.metadata)
    if trace is None:
        return []
    headers: list[tuple[str, str | bytes | None]] = [("traceparent", trace.traceparent.encode())]
    if trace.tracestate:
        headers.append(("tracestate", trace.tracestate.encode()))
    headers.append(("ce_traceparent", trace.traceparent.encode()))
    if trace.tracestate:
        headers.append(("ce_tracestate", trace.tracestate.encode()))
    return headers


def _header_value_bounds(limits: Limits) -> dict[str, int]:
    """Per header of `record_headers`, the most bytes its value can have."""
    return {
        "event_id": 36,
        "event_type": limits.max_type_name_length,  # type names are ASCII
        "aggregate_type": limits.max_type_name_length,
        "version": len(str(MAX_VERSION)),
        "content_type": 4 * limits.max_type_name_length,  # limited in characters, not bytes
        "ce_specversion": len(CLOUDEVENTS_SPECVERSION),
        "ce_id": 36,
        # Every byte of the id may be percent-encoded (3 bytes); type names are unreserved.
        "ce_source": (
            len(SOURCE_ROOT) + 2 + limits.max_type_name_length + 3 * limits.max_aggregate_id_bytes
        ),
        "ce_type": limits.max_type_name_length,
        "ce_time": len("9999-12-31T23:59:59.999999Z"),
        "ce_subject": limits.max_aggregate_id_bytes,
        "ce_dataschema": len(RECORD_DATASCHEMA),
        "content-type": len(RECORD_CONTENT_TYPE),
        "traceparent": TRACEPARENT_BYTES,
        "tracestate": MAX_TRACESTATE_BYTES,
        "ce_traceparent": TRACEPARENT_BYTES,
        "ce_tracestate": MAX_TRACESTATE_BYTES,
    }


def max_headers_bytes(limits: Limits) -> int:
    """The record headers at their largest: per header its name, value and their lengths (zigzag
    varints, so twice the length is encoded)."""
    return sum(
        varint_size(2 * len(name)) + len(name) + varint_size(2 * size) + size
        for name, size in _header_value_bounds(limits).items()
    )


def max_record_bytes(limits: Limits) -> int:
    """The largest record of an accepted event: what librdkafka compares with the producer's
    message.max.bytes when the record is produced."""
    return (
        RECORD_OVERHEAD
        + limits.max_aggregate_id_bytes  # key
        + max_event_bytes(limits)  # value
        + max_headers_bytes(limits)
    )


def max_batch_bytes(limits: Limits) -> int:
    """The largest record batch holding one accepted event: what the broker compares with the
    topic's max.message.bytes. Compression never makes it larger: librdkafka sends a batch
    uncompressed when compressing would grow it."""
    return RECORD_BATCH_OVERHEAD + max_record_bytes(limits)


def required_message_bytes(limits: Limits) -> int:
    """What a topic's max.message.bytes and the producer's message.max.bytes must be at least:
    the largest batch, with a margin for what the bound may one day miss (a new field)."""
    bound = max_batch_bytes(limits)
    return bound + max(64 * 1024, bound // 32)


def message_bytes(limits: Limits, ceiling: int) -> int:
    """max.message.bytes for our event topics and message.max.bytes for our producer.

    Batches of many small records are at most min(message.max.bytes, batch.size) (librdkafka's
    batch.size defaults to 1,000,000), and a batch of one large record at most
    `max_batch_bytes`; both fit. Not below Kafka's default unless the ceiling
    (EVENTSTORE_KAFKA_MAX_MESSAGE_BYTES, checked at start-up to hold the requirement) is.
    """
    return max(required_message_bytes(limits), min(KAFKA_DEFAULT_MAX_MESSAGE_BYTES, ceiling))
