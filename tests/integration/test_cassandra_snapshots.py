"""The snapshot contract against the real Cassandra store."""

from __future__ import annotations

import pytest

from eventstore.storage.cassandra import CassandraEventStorage
from eventstore.storage.snapshots import CassandraSnapshotStore
from tests.contract.snapshots import SnapshotStoreContract

pytestmark = pytest.mark.integration


class TestCassandraSnapshots(SnapshotStoreContract):
    @pytest.fixture
    async def snapshots(self, cassandra_storage: CassandraEventStorage) -> CassandraSnapshotStore:
        return await CassandraSnapshotStore.create(cassandra_storage.connection)
