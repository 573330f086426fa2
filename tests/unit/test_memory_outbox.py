"""The outbox contract against the in-memory fake."""

from __future__ import annotations

import pytest

from eventstore.storage.memory import InMemoryPublicationLog
from tests.contract.outbox import PublicationLogContract


class TestInMemoryOutbox(PublicationLogContract):
    @pytest.fixture
    def outbox(self) -> InMemoryPublicationLog:
        return InMemoryPublicationLog()
