"""Small helpers shared by tests."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from eventstore.v1 import eventstore_pb2 as pb


def unique(prefix: str) -> str:
    """A name no other test (or earlier run) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list[Message]:
    """Every record of `topic` from the beginning, once `expected` of them have arrived (or the
    time is up), in partition order."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("test-reader"),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    records: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        metadata = None
        while time.monotonic() < deadline:
            metadata = consumer.list_topics(topic, timeout=5).topics.get(topic)
            if metadata is not None and metadata.error is None and metadata.partitions:
                break
            time.sleep(0.2)
        assert metadata is not None, f"topic {topic} never appeared"
        assert metadata.partitions, f"topic {topic} has no partitions"
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions])
        while len(records) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            records.append(message)
        # A little longer, to see duplicates or extras that should not be there.
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            message = consumer.poll(0.2)
            if message is not None and not message.error():
                records.append(message)
    finally:
        consumer.close()
    return records


def decode(message: Message) -> pb.Event:
    event = pb.Event()
    event.ParseFromString(bytes(message.value() or b""))
    return event


def header_map(message: Message) -> dict[str, bytes]:
    raw = message.headers() or []
    pairs = list(raw.items()) if isinstance(raw, dict) else raw
    return {k: v.encode() if isinstance(v, str) else (v or b"") for k, v in pairs}
