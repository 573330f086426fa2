"""The schema registry contract against the in-memory fake."""

from __future__ import annotations

import pytest

from eventstore.storage.memory import InMemorySchemaRegistry
from tests.contract.schemas import SchemaRegistryContract


class TestInMemorySchemas(SchemaRegistryContract):
    @pytest.fixture
    def schemas(self) -> InMemorySchemaRegistry:
        return InMemorySchemaRegistry()
