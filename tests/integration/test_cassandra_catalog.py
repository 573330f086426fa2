"""The catalog contract against the real Cassandra adapter."""

from __future__ import annotations

import pytest

from eventstore.storage.cassandra import CassandraEventStorage
from eventstore.storage.catalog import CassandraAggregateCatalog
from tests.contract.catalog import AggregateCatalogContract

pytestmark = pytest.mark.integration


class TestCassandraCatalog(AggregateCatalogContract):
    @pytest.fixture
    async def catalog(self, cassandra_storage: CassandraEventStorage) -> CassandraAggregateCatalog:
        return await CassandraAggregateCatalog.create(cassandra_storage.connection)
