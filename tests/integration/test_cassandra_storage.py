"""The storage contract against the real Cassandra adapter."""

from __future__ import annotations

import pytest

from eventstore.storage.cassandra import CassandraEventStorage
from tests.contract.storage import EventStorageContract

pytestmark = pytest.mark.integration


class TestCassandraStorage(EventStorageContract):
    @pytest.fixture
    def storage(self, cassandra_storage: CassandraEventStorage) -> CassandraEventStorage:
        return cassandra_storage
