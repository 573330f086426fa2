"""Driver errors never cross an adapter boundary: preparing statements against a keyspace
whose tables are not there yet (a migration still running) is StorageUnavailable, which
start-up retries, not a cassandra exception."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from eventstore.config import CassandraSettings
from eventstore.domain.errors import StorageUnavailable
from eventstore.storage.cassandra import CassandraEventStorage
from eventstore.storage.catalog import CassandraAggregateCatalog
from eventstore.storage.connection import CassandraConnection
from eventstore.storage.outbox import CassandraPublicationLog
from eventstore.storage.snapshots import CassandraSnapshotStore

pytestmark = pytest.mark.integration


@pytest.fixture
async def no_schema(cassandra_hosts: str) -> AsyncIterator[CassandraConnection]:
    settings = CassandraSettings(hosts=cassandra_hosts, keyspace=f"absent_{uuid.uuid4().hex[:12]}")
    connection = await CassandraConnection.open(settings)
    yield connection
    await connection.close()


ADAPTERS: dict[str, Callable[[CassandraConnection], Awaitable[object]]] = {
    "storage": lambda connection: asyncio.to_thread(CassandraEventStorage, connection),
    "outbox": CassandraPublicationLog.create,
    "catalog": CassandraAggregateCatalog.create,
    "snapshots": CassandraSnapshotStore.create,
}


@pytest.mark.parametrize("adapter", list(ADAPTERS))
async def test_preparing_without_the_schema_is_storage_unavailable(
    no_schema: CassandraConnection, adapter: str
) -> None:
    with pytest.raises(StorageUnavailable):
        await ADAPTERS[adapter](no_schema)
