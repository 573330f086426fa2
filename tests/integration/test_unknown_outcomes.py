"""Invariant 5: a CAS write timeout ("maybe applied") is resolved, never guessed.

The fault is injected at the storage adapter's driver boundary: the real driver exception
(WriteTimeout, write_type CAS) is raised before or after the real batch reaches Cassandra, and
the adapter's ordinary handling has to find out what happened.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from cassandra import ConsistencyLevel, Unavailable, WriteTimeout, WriteType

from eventstore.client import (
    Event,
    EventStoreClient,
    RetryPolicy,
    UnavailableError,
    WrongExpectedVersionError,
)
from eventstore.domain.events import NewEvent
from eventstore.server import RunningServer
from eventstore.storage.cassandra import CassandraEventStorage
from eventstore.usecases.append import utc_now_ms
from tests.support import unique

pytestmark = pytest.mark.integration


def cas_timeout() -> WriteTimeout:
    return WriteTimeout(
        "injected: Operation timed out - received only 0 responses.",
        consistency=ConsistencyLevel.SERIAL,
        required_responses=1,
        received_responses=0,
        write_type=WriteType.CAS,
    )


class Faults:
    """Raise the given exception once at each named stage."""

    def __init__(self, **stages: Exception) -> None:
        self.pending = dict(stages)
        self.fired: list[str] = []

    async def __call__(self, stage: str) -> None:
        exc = self.pending.pop(stage, None)
        if exc is not None:
            self.fired.append(stage)
            raise exc


@pytest.fixture
def server_storage(server: RunningServer) -> CassandraEventStorage:
    """The storage adapter the server itself appends through (faults are injected into it)."""
    assert server.components is not None
    storage = server.components.storage
    assert isinstance(storage, CassandraEventStorage)
    return storage


@pytest.fixture
async def no_retry_client(server: RunningServer) -> AsyncIterator[EventStoreClient]:
    # No client retries: the server alone must get the answer right.
    async with EventStoreClient(f"127.0.0.1:{server.port}", retry=RetryPolicy(attempts=1)) as c:
        yield c


async def test_timeout_after_commit_resolves_as_applied(
    server_storage: CassandraEventStorage, no_retry_client: EventStoreClient
) -> None:
    aggregate = unique("maybe")
    await no_retry_client.append(aggregate, "T", [Event("Seed", {})], expected=0)
    server_storage.fault_hook = faults = Faults(after_cas=cas_timeout())
    events = [Event("A", {}), Event("B", {})]
    result = await no_retry_client.append(aggregate, "T", events, expected=1)
    assert faults.fired == ["after_cas"]
    assert (result.first_version, result.last_version) == (2, 3)
    assert not result.already_committed
    stored = await no_retry_client.read_all(aggregate)
    assert [e.event_id for e in stored[1:]] == [e.event_id for e in events]


async def test_timeout_before_commit_resolves_as_not_applied_then_writes_once(
    server_storage: CassandraEventStorage, no_retry_client: EventStoreClient
) -> None:
    aggregate = unique("maybe")
    server_storage.fault_hook = faults = Faults(before_cas=cas_timeout())
    events = [Event("A", {}), Event("B", {})]
    result = await no_retry_client.append(aggregate, "T", events, expected=0)
    assert faults.fired == ["before_cas"]
    assert (result.first_version, result.last_version) == (1, 2)
    stored = await no_retry_client.read_all(aggregate)
    assert [e.event_id for e in stored] == [e.event_id for e in events]


async def test_timeout_with_concurrent_winner_is_a_conflict_not_a_guess(
    server_storage: CassandraEventStorage, no_retry_client: EventStoreClient
) -> None:
    """Not applied, and meanwhile someone else took the version: a real conflict."""
    aggregate = unique("maybe")
    other = NewEvent(uuid.uuid4(), "Other", b"{}", "application/json")

    async def someone_else_wins(stage: str) -> None:
        if stage == "before_cas":
            server_storage.fault_hook = None
            await server_storage.append(aggregate, "T", 0, [other], utc_now_ms())
            raise cas_timeout()

    server_storage.fault_hook = someone_else_wins
    with pytest.raises(WrongExpectedVersionError) as caught:
        await no_retry_client.append(aggregate, "T", [Event("Mine", {})], expected=0)
    assert caught.value.actual_version == 1
    stored = await no_retry_client.read_all(aggregate)
    assert [e.event_type for e in stored] == ["Other"]


async def test_unresolvable_outcome_is_unavailable_and_the_retry_settles_it(
    server_storage: CassandraEventStorage, no_retry_client: EventStoreClient
) -> None:
    aggregate = unique("maybe")
    server_storage.fault_hook = Faults(
        after_cas=cas_timeout(),
        before_resolve=Unavailable(
            "injected", consistency=ConsistencyLevel.SERIAL, required_replicas=1, alive_replicas=0
        ),
    )
    events = [Event("A", {}), Event("B", {})]
    with pytest.raises(UnavailableError):
        await no_retry_client.append(aggregate, "T", events, expected=0)
    retried = await no_retry_client.append(aggregate, "T", events, expected=0)
    assert retried.already_committed
    assert (retried.first_version, retried.last_version) == (1, 2)
    assert len(await no_retry_client.read_all(aggregate)) == 2
