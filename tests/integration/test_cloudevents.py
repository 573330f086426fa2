"""Our Kafka records are CloudEvents in binary content mode: published by the real publisher to
the real Kafka, read back with confluent_kafka and parsed by the official CloudEvents SDK, as a
consumer would."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from confluent_kafka import Message

from eventstore.config import KafkaSettings
from eventstore.domain.events import RecordedEvent
from eventstore.domain.validation import Limits
from eventstore.publishing.kafka import KafkaEventPublisher
from eventstore.wire.records import cloudevents_source, decode_event
from tests.contract.publisher import recorded
from tests.support import header_map, read_topic, unique

pytestmark = pytest.mark.integration


class EnvelopeFormat(JSONFormat):
    """The SDK's JSON format, but a protobuf value stays bytes: JSONFormat.read_data returns any
    value that happens to decode as UTF-8 as a str, whatever its content type says."""

    def read_data(
        self, body: bytes, datacontenttype: str | None
    ) -> dict[str, Any] | str | bytes | None:
        if datacontenttype == "application/protobuf":
            return body
        return super().read_data(body, datacontenttype)


def as_cloudevent(record: Message) -> BaseCloudEvent:
    """The record parsed as a binary-mode CloudEvent by the SDK (which validates it)."""
    message = KafkaMessage(
        headers=header_map(record), key=record.key(), value=bytes(record.value() or b"")
    )
    return from_binary(message, EnvelopeFormat(), CloudEvent)


def envelope_of(cloudevent: BaseCloudEvent) -> RecordedEvent:
    """The CloudEvent's data: our protobuf envelope, as its content type and schema say."""
    assert cloudevent.get_datacontenttype() == "application/protobuf"
    assert cloudevent.get_dataschema() == "https://type.googleapis.com/eventstore.v1.Event"
    data = cloudevent.get_data()
    assert isinstance(data, bytes)
    return decode_event(data)


def assert_describes_its_value(record: Message) -> RecordedEvent:
    """The record's CloudEvent attributes agree with the envelope it carries; returns that."""
    cloudevent = as_cloudevent(record)
    event = envelope_of(cloudevent)
    assert cloudevent.get_specversion() == "1.0"
    assert cloudevent.get_id() == str(event.event_id)
    assert cloudevent.get_source() == cloudevents_source(event.aggregate_type, event.aggregate_id)
    assert cloudevent.get_type() == event.event_type
    assert cloudevent.get_time() == event.recorded_at
    assert cloudevent.get_subject() == event.aggregate_id
    return event


async def test_published_records_parse_as_binary_mode_cloudevents(
    kafka_settings: KafkaSettings,
) -> None:
    aggregate_type = unique("Cloud").replace("-", "")
    prefix = unique("order")
    aggregate_id = f"{prefix}/ü ?#%"  # characters a URI path segment must percent-encode
    events = [
        dataclasses.replace(e, recorded_at=datetime(2026, 5, 6, 7, 8, 9, 123456 + n, tzinfo=UTC))
        for n, e in enumerate(recorded(aggregate_id, aggregate_type, range(1, 3)))
    ]
    publisher = KafkaEventPublisher(kafka_settings, Limits())
    try:
        await (await publisher.send(events)).wait()
    finally:
        await publisher.close()

    topic = kafka_settings.topic(aggregate_type)
    records = await asyncio.to_thread(read_topic, kafka_settings.bootstrap, topic, len(events))
    assert len(records) == len(events)  # one aggregate: one partition, in order
    for record, event in zip(records, events, strict=True):
        cloudevent = as_cloudevent(record)
        assert cloudevent.get_specversion() == "1.0"
        assert cloudevent.get_id() == str(event.event_id)
        assert cloudevent.get_source() == (
            f"/eventstore/{aggregate_type}/{prefix}%2F%C3%BC%20%3F%23%25"
        )
        assert cloudevent.get_type() == "Happened"
        assert cloudevent.get_time() == event.recorded_at
        assert cloudevent.get_subject() == aggregate_id
        # The data is the record value, our envelope, whole: the event's own data is inside.
        assert cloudevent.get_data() == record.value()
        assert envelope_of(cloudevent) == event
        headers = header_map(record)
        # The SDK makes up a missing specversion, id or time: the record must carry them.
        assert {name for name in headers if name.startswith("ce_")} == {
            "ce_specversion",
            "ce_id",
            "ce_source",
            "ce_type",
            "ce_time",
            "ce_subject",
            "ce_dataschema",
        }
        assert headers["ce_specversion"] == b"1.0"
        # Our own headers are still there, beside the CloudEvents ones.
        assert headers["event_id"] == str(event.event_id).encode()
        assert headers["content_type"] == b"application/json"
        # The check test_replay.py makes of republished records holds for these.
        assert assert_describes_its_value(record) == event
