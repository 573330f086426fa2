"""Upper bounds of the encoded size of what the store accepts (invariant 11).

Validation counts an event's data, event type and metadata keys and values against
`Limits.max_event_bytes`. The protobuf encoding adds what it does not count: the event id,
aggregate id and type, content type, version and time, and per field a tag and a length
prefix. Per metadata entry that is six bytes of framing or more, so an event whose counted
bytes were all tiny metadata entries would encode to about three times its counted size;
`Limits.max_metadata_entries` bounds the entries, and with it the framing (the worst case,
which tests build and encode: every entry used, all of them long). The functions here give a
safe upper bound from the limits alone, so that the places an event goes (a Kafka record, a
gRPC message) can be sized for the largest event the store accepts. Pure arithmetic: no
protobuf import.
"""

from __future__ import annotations

from eventstore.domain.access import PRINCIPAL_KEY
from eventstore.domain.events import SCHEMA_VERSION_KEY
from eventstore.domain.tracecontext import (
    MAX_TRACESTATE_BYTES,
    TRACEPARENT_BYTES,
    TRACEPARENT_KEY,
    TRACESTATE_KEY,
)
from eventstore.domain.validation import MAX_EVENT_ID_LENGTH, Limits

#: What our client (eventstore.client) accepts in one message from the server.
CLIENT_MAX_RECEIVE_BYTES = 64 * 1024 * 1024
#: gRPC's own ceiling on a message length (a signed 32-bit size).
GRPC_MAX_MESSAGE_BYTES = 2**31 - 1
#: The server splits a ReadAggregate page into messages of about this many bytes of events
#: (one event alone may be larger; see `max_read_message_bytes`).
READ_MESSAGE_BUDGET_BYTES = 1024 * 1024
#: Allowance for a subscription checkpoint (a base64 JSON vector of partition offsets: about
#: 30 bytes per aggregate type and partition, so this covers some 30,000 partitions).
MAX_CHECKPOINT_BYTES = 1024 * 1024

_UUID_TEXT = 36  # str(uuid.UUID): what the server stores and sends, whatever the client wrote
_INT64 = 10  # varint of any int64 (negative ones take ten bytes)
_NANOS = 5  # varint of 0..999,999,999
#: Characters are limited in count (content types); one UTF-8 character is at most 4 bytes.
_UTF8_MAX = 4
#: The principal name the server stamps on every event (PRINCIPAL_KEY): at most 128 ASCII
#: characters (domain/access.py); counted generously.
_PRINCIPAL_NAME_BYTES = 256

# Keys of one metadata map are distinct and at least one byte long. Only entries of one or two
# counted bytes cost more than three times their counted bytes (see `_metadata_bound`), and only
# so many keys that short exist: every 1-byte UTF-8 string (ASCII), and every 2-byte one (two
# ASCII characters, or one character U+0080..U+07FF). Validation refuses some of them (control
# characters, the reserved `$`); counting all of them keeps this independent of those rules.
_ONE_BYTE_KEYS = 128
_TWO_BYTE_KEYS = 128 * 128 + (0x800 - 0x80)
#: Per map, the most the short entries can add beyond three times their counted bytes.
_SHORT_ENTRY_EXCESS = 4 * _ONE_BYTE_KEYS + 2 * _TWO_BYTE_KEYS


def varint_size(value: int) -> int:
    """Bytes of an unsigned varint (protobuf lengths, Kafka's unsigned varints)."""
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


def _length_delimited(length: int) -> int:
    """A string/bytes/message field of `length` bytes: tag (fields < 16: one byte) + length."""
    return 1 + varint_size(length) + length


def _map_entry(key: int, value: int) -> int:
    return _length_delimited(_length_delimited(key) + _length_delimited(value))


_TIMESTAMP = _length_delimited((1 + _INT64) + (1 + _NANOS))
#: What the server stamps on every event: the principal, the append's trace context, and the
#: schema version of its data (an int32 in decimal).
_SERVER_METADATA = (
    _map_entry(len(PRINCIPAL_KEY), _PRINCIPAL_NAME_BYTES)
    + _map_entry(len(TRACEPARENT_KEY), TRACEPARENT_BYTES)
    + _map_entry(len(TRACESTATE_KEY), MAX_TRACESTATE_BYTES)
    + _map_entry(len(SCHEMA_VERSION_KEY), len(str(-(2**31))))
)


def _entry_framing(counted: int) -> int:
    """The most bytes protobuf adds to one metadata entry whose key and value are at most
    `counted` bytes together: tags of the entry, key and value, and their three lengths."""
    part = varint_size(counted)
    return 3 + 2 * part + varint_size(counted + 2 + 2 * part)


def _metadata_bound(counted: int, maps: int, entries: int) -> int:
    """Encoded bytes of `maps` metadata maps of at most `entries` entries each, whose keys and
    values add up to `counted` bytes: the lesser of two bounds, each valid alone.

    By count: every entry adds at most `_entry_framing` to its counted bytes. By ratio,
    whatever the count: an entry of k key bytes and v value bytes (s = k + v counted) encodes to
    s + 3 + varint(k) + varint(v) + varint(length of the entry): s + 6 for small entries, which
    is at most 3s once s >= 3 (and the varints grow far slower than s). An entry of s = 1 (a
    1-byte key) encodes to 3s + 4, one of s = 2 (a 1- or 2-byte key) to 3s + 2. So the excess
    over 3 * counted is at most 4 per 1-byte key and 2 per 2-byte key of each map, and at most
    4a + 2b <= counted + 3a for a entries of s = 1 and b of s = 2 (a + 2b <= counted).
    """
    if counted <= 0:
        return 0
    by_count = counted + maps * entries * _entry_framing(counted)
    one_byte = min(_ONE_BYTE_KEYS * maps, counted)
    excess = min(_SHORT_ENTRY_EXCESS * maps, counted + 3 * one_byte)
    return min(by_count, 3 * counted + excess)


def _payload_bound(counted: int, events: int, limits: Limits) -> int:
    """Event type, data and metadata of `events` events with `counted` bytes between them."""
    # The type and the data encode to their counted bytes plus a tag and a length each;
    # metadata costs at least as much per counted byte (both of its bounds grow by at least
    # one byte per counted byte), so the bound puts every counted byte there.
    prefixes = events * 2 * (1 + varint_size(counted))
    return prefixes + _metadata_bound(counted, events, limits.max_metadata_entries)


def _event_counted(limits: Limits) -> int:
    """The most counted bytes (data + metadata + type) one accepted event can have."""
    return min(limits.max_event_bytes, limits.max_append_bytes)


def _event_fixed(limits: Limits) -> int:
    """An Event's fields outside the counted bytes, at their largest, and the server's metadata."""
    return (
        _length_delimited(_UUID_TEXT)  # event_id
        + _length_delimited(limits.max_aggregate_id_bytes)  # aggregate_id
        + _length_delimited(limits.max_type_name_length)  # aggregate_type (ASCII)
        + (1 + _INT64)  # version
        + _length_delimited(_UTF8_MAX * limits.max_type_name_length)  # content_type
        + _TIMESTAMP  # recorded_at
        + _SERVER_METADATA
        + (1 + _INT64)  # schema_version
    )


def max_event_bytes(limits: Limits) -> int:
    """The largest serialized `eventstore.v1.Event` of an event the store accepts.

    This is the Kafka record value, and what ReadAggregate, Subscribe and QueryEvents send
    per event.
    """
    return _event_fixed(limits) + _payload_bound(_event_counted(limits), 1, limits)


def max_append_request_bytes(limits: Limits) -> int:
    """The largest serialized `AppendRequest` that validation accepts.

    (A client may add unknown fields, which protobuf skips; those are not bounded here.)
    """
    events = limits.max_events_per_append
    counted = min(limits.max_append_bytes, events * limits.max_event_bytes)
    per_event = (
        1
        + 5  # EventData field tag and length (< 2**32)
        # uuid.UUID() accepts braces, "urn:uuid:" and any Unicode digit: up to 4 bytes each
        + _length_delimited(_UTF8_MAX * MAX_EVENT_ID_LENGTH)
        + _length_delimited(_UTF8_MAX * limits.max_type_name_length)  # content_type
    )
    return (
        _length_delimited(limits.max_aggregate_id_bytes)
        + _length_delimited(limits.max_type_name_length)
        + _length_delimited(1 + _INT64)  # expected_version (exact)
        + events * per_event
        + _payload_bound(counted, events, limits)
    )


def max_snapshot_request_bytes(limits: Limits) -> int:
    """The largest SaveSnapshotRequest or Snapshot (GetSnapshot's answer) that is accepted."""
    return (
        _length_delimited(limits.max_aggregate_id_bytes)
        + (1 + _INT64)  # version
        + _length_delimited(limits.max_snapshot_bytes)  # state
        + _length_delimited(limits.max_type_name_length)  # state_type
        + (1 + _INT64)  # schema_version (a negative int32 takes ten bytes)
        + _TIMESTAMP  # created_at
    )


def max_subscription_message_bytes(limits: Limits) -> int:
    """The largest SubscribeResponse: one event and its checkpoint."""
    return _length_delimited(max_event_bytes(limits)) + _length_delimited(MAX_CHECKPOINT_BYTES)


def max_read_message_bytes(limits: Limits) -> int:
    """The largest ReadAggregateResponse: events up to the budget, plus the one that crossed it."""
    return READ_MESSAGE_BUDGET_BYTES + _length_delimited(max_event_bytes(limits))


def max_server_message_bytes(limits: Limits) -> int:
    """The largest message the server sends (QueryEvents pages excepted: see README)."""
    return max(
        max_subscription_message_bytes(limits),
        max_read_message_bytes(limits),
        max_snapshot_request_bytes(limits),
    )
