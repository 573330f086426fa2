"""The publisher contract against the recording fake."""

from __future__ import annotations

import pytest

from eventstore.domain.events import RecordedEvent
from tests.contract.publisher import EventPublisherContract, ReadBack
from tests.fakes import RecordingPublisher


class TestRecordingPublisher(EventPublisherContract):
    @pytest.fixture
    def publisher(self) -> RecordingPublisher:
        return RecordingPublisher()

    @pytest.fixture
    def read_back(self, publisher: RecordingPublisher) -> ReadBack:
        async def read(aggregate_type: str, count: int) -> list[RecordedEvent]:
            return [e for e in publisher.records if e.aggregate_type == aggregate_type]

        return read
