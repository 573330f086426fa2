"""The event index contract against the in-memory fake."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from eventstore.domain.events import RecordedEvent
from tests.contract.index import Add, EventIndexContract
from tests.fakes import InMemoryEventIndex


class TestInMemoryEventIndex(EventIndexContract):
    @pytest.fixture
    def index(self) -> InMemoryEventIndex:
        return InMemoryEventIndex()

    @pytest.fixture
    def add(self, index: InMemoryEventIndex) -> Add:
        async def add(events: Sequence[RecordedEvent]) -> None:
            index.add(events)

        return add
