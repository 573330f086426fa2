"""The snapshot contract against the in-memory fake."""

from __future__ import annotations

import pytest

from eventstore.storage.memory import InMemorySnapshotStore
from tests.contract.snapshots import SnapshotStoreContract


class TestInMemorySnapshots(SnapshotStoreContract):
    @pytest.fixture
    def snapshots(self) -> InMemorySnapshotStore:
        return InMemorySnapshotStore()
