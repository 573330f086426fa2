"""The event log contract against the in-memory fake (and the publisher contract, since the
fake is also what publishes into it)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from eventstore.domain.events import RecordedEvent
from tests.contract.log import EventLogContract, Publish
from tests.contract.publisher import EventPublisherContract, ReadBack
from tests.fakes import InMemoryEventLog


@pytest.fixture
def log() -> InMemoryEventLog:
    return InMemoryEventLog(partitions=3)


class TestInMemoryEventLog(EventLogContract):
    quiet_s = 0.0

    @pytest.fixture
    def partitions(self, log: InMemoryEventLog) -> int:
        return log.partitions

    @pytest.fixture
    def publish(self, log: InMemoryEventLog) -> Publish:
        async def publish(events: Sequence[RecordedEvent]) -> None:
            await (await log.send(events)).wait()

        return publish


class TestInMemoryEventLogAsPublisher(EventPublisherContract):
    @pytest.fixture
    def publisher(self, log: InMemoryEventLog) -> InMemoryEventLog:
        return log

    @pytest.fixture
    def read_back(self, log: InMemoryEventLog) -> ReadBack:
        async def read(aggregate_type: str, count: int) -> list[RecordedEvent]:
            return [e for partition in log.topics[aggregate_type] for e in partition]

        return read
