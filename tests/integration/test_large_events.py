"""Invariant 11 for Kafka and gRPC: the largest event the store accepts reaches Kafka, a
subscriber, and a reader — also through a topic created before topics were sized for it."""

from __future__ import annotations

import asyncio
import os

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.admin._resource import ResourceType
from confluent_kafka.cimpl import NewTopic

from eventstore.client import Event, EventStoreClient
from eventstore.config import KafkaSettings, LimitSettings, ServerSettings
from eventstore.domain.events import RecordedEvent
from eventstore.wire.records import (
    KAFKA_DEFAULT_MAX_MESSAGE_BYTES,
    max_batch_bytes,
    message_bytes,
)
from tests import worst_case
from tests.integration.conftest import StartServer
from tests.support import decode, read_topic, unique

pytestmark = pytest.mark.integration

BINARY = "application/octet-stream"


def largest_events(limits: LimitSettings) -> list[Event]:
    """Events exactly at max_event_bytes: incompressible data only, and (the most bytes once
    encoded) metadata only, in as many entries as max_metadata_entries allows."""
    domain = limits.to_limits()
    events = []
    for heavy in (False, True):
        raw = worst_case.raw_event(domain, heavy_metadata=heavy)
        events.append(Event(raw.event_type, raw.data, dict(raw.metadata), raw.content_type))
    return events


def counted(event: Event) -> int:
    metadata = sum(len(k.encode()) + len(v.encode()) for k, v in event.metadata.items())
    return len(event.event_type) + len(event.payload()) + metadata


async def subscribe_until(
    client: EventStoreClient, aggregate_type: str, count: int
) -> list[RecordedEvent]:
    received: list[RecordedEvent] = []
    async for message in client.subscribe(aggregate_types=[aggregate_type]):
        if message.event is not None:
            received.append(message.event)
            if len(received) == count:
                break
    return received


async def topic_max_message_bytes(admin: AdminClient, topic: str) -> int:
    resource = ConfigResource(ResourceType.TOPIC, topic)
    for _ in range(100):
        try:
            entries = await asyncio.wrap_future(admin.describe_configs([resource])[resource])
            return int(entries["max.message.bytes"].value)
        except KafkaException as exc:  # a topic just created is unknown for a moment
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise
            await asyncio.sleep(0.1)
    raise AssertionError(f"topic {topic} never appeared")


async def test_the_largest_accepted_events_reach_kafka_and_a_subscriber(
    server_settings: ServerSettings,
    start_server: StartServer,
    kafka_settings: KafkaSettings,
) -> None:
    server = await start_server(server_settings)
    limits = server_settings.limits
    events = largest_events(limits)
    assert [counted(e) for e in events] == [limits.max_event_bytes] * 2
    aggregate = unique("big")
    async with EventStoreClient(f"127.0.0.1:{server.port}") as client:
        subscriber = asyncio.create_task(subscribe_until(client, "Blob", len(events)))
        for n, event in enumerate(events):
            await client.append(aggregate, "Blob", [event], expected=n)
        received = await asyncio.wait_for(subscriber, 120)
        assert [e.event_id for e in received] == [e.event_id for e in events]
        assert [e.data for e in received] == [e.payload() for e in events]
        assert received[1].metadata == events[1].metadata

    topic = kafka_settings.topic("Blob")
    records = await asyncio.to_thread(read_topic, kafka_settings.bootstrap, topic, len(events))
    assert [decode(r).event_id for r in records] == [str(e.event_id) for e in events]
    assert [decode(r).data for r in records] == [e.payload() for e in events]
    # The metadata-heavy one is the largest once encoded: above Kafka's default ~1 MB, and
    # within the bound the topic was sized by.
    sizes = [len(r.value() or b"") for r in records]
    assert sizes[1] > max(sizes[0], KAFKA_DEFAULT_MAX_MESSAGE_BYTES)
    assert sizes[1] < max_batch_bytes(limits.to_limits())
    admin = AdminClient(kafka_settings.client_config())
    assert await topic_max_message_bytes(admin, topic) == message_bytes(
        limits.to_limits(), kafka_settings.max_message_bytes
    )


async def test_a_topic_created_before_with_a_small_max_message_bytes_is_raised_on_first_use(
    server_settings: ServerSettings,
    start_server: StartServer,
    kafka_settings: KafkaSettings,
) -> None:
    topic = kafka_settings.topic("Legacy")
    admin = AdminClient(kafka_settings.client_config())
    created = admin.create_topics(
        [NewTopic(topic, 3, 1, config={"max.message.bytes": "100000"})], request_timeout=10
    )
    await asyncio.wrap_future(created[topic])
    assert await topic_max_message_bytes(admin, topic) == 100_000

    server = await start_server(server_settings)
    (event, _) = largest_events(server_settings.limits)
    aggregate = unique("legacy")
    async with EventStoreClient(f"127.0.0.1:{server.port}") as client:
        await client.append(aggregate, "Legacy", [event], expected=0)

    # Publication runs in the background of the append.
    records = await asyncio.to_thread(read_topic, kafka_settings.bootstrap, topic, 1)
    assert [decode(r).data for r in records] == [event.payload()]
    needed = message_bytes(server_settings.limits.to_limits(), kafka_settings.max_message_bytes)
    assert await topic_max_message_bytes(admin, topic) == needed


async def test_a_page_of_large_events_is_read_in_messages_the_client_takes(
    server_settings: ServerSettings, start_server: StartServer
) -> None:
    """A read page holds up to EVENTSTORE_READ_PAGE_SIZE events; of large events it is sent
    as several messages, not one beyond the gRPC sizes."""
    limits = LimitSettings(max_event_bytes=512 * 1024, max_append_bytes=2 * 1024 * 1024)
    settings = server_settings.model_copy(update={"limits": limits})
    server = await start_server(settings)
    aggregate = unique("page")
    appended = 0
    async with EventStoreClient(f"127.0.0.1:{server.port}") as client:
        for _ in range(10):  # 40 events of 512 KiB: 20 MiB in one page of the default 500
            batch = [
                Event("Chunk", os.urandom(limits.max_event_bytes - 5), content_type=BINARY)
                for _ in range(4)
            ]
            await client.append(aggregate, "Blob", batch, expected=appended)
            appended += len(batch)
        read = [event async for event in client.read(aggregate)]
    assert [e.version for e in read] == list(range(1, appended + 1))
    assert all(len(e.data) == limits.max_event_bytes - 5 for e in read)
