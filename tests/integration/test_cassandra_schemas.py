"""The schema registry contract against the real Cassandra registry."""

from __future__ import annotations

import pytest

from eventstore.storage.cassandra import CassandraEventStorage
from eventstore.storage.schemas import CassandraSchemaRegistry
from tests.contract.schemas import SchemaRegistryContract

pytestmark = pytest.mark.integration


class TestCassandraSchemas(SchemaRegistryContract):
    @pytest.fixture
    async def schemas(self, cassandra_storage: CassandraEventStorage) -> CassandraSchemaRegistry:
        return await CassandraSchemaRegistry.create(cassandra_storage.connection)
