"""The subject key contract against the real Cassandra store."""

from __future__ import annotations

import pytest

from eventstore.storage.cassandra import CassandraEventStorage
from eventstore.storage.subject_keys import CassandraSubjectKeys
from tests.contract.subject_keys import SubjectKeysContract

pytestmark = pytest.mark.integration


class TestCassandraSubjectKeys(SubjectKeysContract):
    @pytest.fixture
    async def subject_keys(self, cassandra_storage: CassandraEventStorage) -> CassandraSubjectKeys:
        return await CassandraSubjectKeys.create_store(cassandra_storage.connection)
