"""The outbox contract against the real Cassandra adapter."""

from __future__ import annotations

import pytest

from eventstore.storage.cassandra import CassandraEventStorage
from eventstore.storage.outbox import CassandraPublicationLog
from tests.contract.outbox import PublicationLogContract

pytestmark = pytest.mark.integration


class TestCassandraOutbox(PublicationLogContract):
    @pytest.fixture
    async def outbox(self, cassandra_storage: CassandraEventStorage) -> CassandraPublicationLog:
        return await CassandraPublicationLog.create(cassandra_storage.connection)
