"""The catalog contract against the in-memory fake."""

from __future__ import annotations

import pytest

from eventstore.storage.memory import InMemoryAggregateCatalog
from tests.contract.catalog import AggregateCatalogContract


class TestInMemoryCatalog(AggregateCatalogContract):
    @pytest.fixture
    def catalog(self) -> InMemoryAggregateCatalog:
        return InMemoryAggregateCatalog()
