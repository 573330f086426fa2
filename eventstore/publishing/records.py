"""The Kafka record of an event: what other services consume (see README)."""

from __future__ import annotations

from eventstore.api.convert import event_to_proto
from eventstore.domain.events import RecordedEvent


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


def record_headers(event: RecordedEvent) -> list[tuple[str, str | bytes | None]]:
    return [
        ("event_id", str(event.event_id).encode()),
        ("event_type", event.event_type.encode()),
        ("aggregate_type", event.aggregate_type.encode()),
        ("version", str(event.version).encode()),
        ("content_type", event.content_type.encode()),
    ]
