"""SaveSnapshot and GetSnapshot over the in-memory stores."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from eventstore.domain.access import UNRESTRICTED
from eventstore.domain.errors import InvalidArgument, SnapshotNotFound
from eventstore.storage.memory import InMemoryEventStorage, InMemorySnapshotStore
from eventstore.usecases.snapshots import GetSnapshot, SaveSnapshot
from tests.contract.storage import new_events

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SAVED_AT = datetime(2026, 2, 2, tzinfo=UTC)


@pytest.fixture
async def use_cases() -> tuple[SaveSnapshot, GetSnapshot]:
    storage = InMemoryEventStorage()
    await storage.append("a", "T", 0, new_events(5), NOW)
    snapshots = InMemorySnapshotStore()
    return SaveSnapshot(storage, snapshots, clock=lambda: SAVED_AT), GetSnapshot(storage, snapshots)


async def test_the_latest_at_or_below_a_version(
    use_cases: tuple[SaveSnapshot, GetSnapshot],
) -> None:
    save, get = use_cases
    for version in (2, 4):
        saved = await save("a", version, b"state-%d" % version, "S", 1, UNRESTRICTED)
        assert (saved.version, saved.created_at) == (version, SAVED_AT)
    assert (await get("a", None, UNRESTRICTED)).state == b"state-4"
    assert (await get("a", 3, UNRESTRICTED)).state == b"state-2"
    assert (await get("a", 4, UNRESTRICTED)).version == 4
    with pytest.raises(SnapshotNotFound):
        await get("a", 1, UNRESTRICTED)
    with pytest.raises(SnapshotNotFound):
        await get("other", None, UNRESTRICTED)


async def test_only_a_version_the_aggregate_has(
    use_cases: tuple[SaveSnapshot, GetSnapshot],
) -> None:
    save, get = use_cases
    with pytest.raises(InvalidArgument) as refused:
        await save("a", 6, b"{}", "S", 1, UNRESTRICTED)
    assert [v.field for v in refused.value.violations] == ["version"]
    assert "it is at 5" in refused.value.violations[0].description
    with pytest.raises(SnapshotNotFound):
        await get("a", None, UNRESTRICTED)
