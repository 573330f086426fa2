"""The event log contract against the real Kafka reader, fed by the real publisher."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from eventstore.config import KafkaSettings
from eventstore.domain.events import RecordedEvent
from eventstore.domain.validation import Limits
from eventstore.publishing.kafka import KafkaEventPublisher
from eventstore.publishing.log import KafkaEventLog
from eventstore.publishing.shared_tail import SharedTailLog
from tests.contract.log import EventLogContract, Publish

pytestmark = pytest.mark.integration


class TestKafkaEventLog(EventLogContract):
    @pytest.fixture
    def log(self, kafka_settings: KafkaSettings) -> KafkaEventLog:
        return KafkaEventLog(kafka_settings)

    @pytest.fixture
    def partitions(self, kafka_settings: KafkaSettings) -> int:
        return kafka_settings.partitions

    @pytest.fixture
    async def publish(self, kafka_settings: KafkaSettings) -> AsyncIterator[Publish]:
        publisher = KafkaEventPublisher(kafka_settings, Limits())

        async def publish(events: Sequence[RecordedEvent]) -> None:
            await (await publisher.send(events)).wait()

        yield publish
        await publisher.close()


class TestSharedTailOverKafka(TestKafkaEventLog):
    """The same contract through the shared tail: a reader hands over from its own consumer
    to the tail once caught up."""

    @pytest.fixture
    async def log(self, kafka_settings: KafkaSettings) -> AsyncIterator[SharedTailLog]:
        shared = SharedTailLog(KafkaEventLog(kafka_settings), idle_wait_s=0.05)
        yield shared
        await shared.close()
