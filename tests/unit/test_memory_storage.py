"""The storage contract against the in-memory fake."""

from __future__ import annotations

import pytest

from eventstore.storage.memory import InMemoryEventStorage
from tests.contract.storage import EventStorageContract


class TestInMemoryStorage(EventStorageContract):
    @pytest.fixture
    def storage(self) -> InMemoryEventStorage:
        return InMemoryEventStorage()
