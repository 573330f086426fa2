"""The publisher contract against the real Kafka adapter (read back from the topic)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from eventstore.config import KafkaSettings
from eventstore.domain.events import RecordedEvent
from eventstore.domain.validation import Limits
from eventstore.publishing.kafka import KafkaEventPublisher
from eventstore.wire.records import decode_event
from tests.contract.publisher import EventPublisherContract, ReadBack
from tests.support import read_topic

pytestmark = pytest.mark.integration


class TestKafkaPublisher(EventPublisherContract):
    @pytest.fixture
    async def publisher(self, kafka_settings: KafkaSettings) -> AsyncIterator[KafkaEventPublisher]:
        publisher = KafkaEventPublisher(kafka_settings, Limits())
        yield publisher
        await publisher.close()

    @pytest.fixture
    def read_back(self, kafka_settings: KafkaSettings) -> ReadBack:
        async def read(aggregate_type: str, count: int) -> list[RecordedEvent]:
            topic = kafka_settings.topic(aggregate_type)
            records = await asyncio.to_thread(read_topic, kafka_settings.bootstrap, topic, count)
            return [decode_event(bytes(r.value() or b"")) for r in records]

        return read
