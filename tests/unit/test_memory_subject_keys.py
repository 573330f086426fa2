"""The subject key contract against the in-memory fake."""

from __future__ import annotations

import pytest

from eventstore.storage.memory import InMemorySubjectKeys
from tests.contract.subject_keys import SubjectKeysContract


class TestInMemorySubjectKeys(SubjectKeysContract):
    @pytest.fixture
    def subject_keys(self) -> InMemorySubjectKeys:
        return InMemorySubjectKeys()
