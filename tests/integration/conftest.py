"""Real-service fixtures: the stack starts once per session (or the endpoint variables point at
existing clusters), and every test gets fresh names (keyspace, topic, index)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from cassandra.cluster import Cluster

from devstack import stack
from eventstore.client import EventStoreClient
from eventstore.config import CassandraSettings, ServerSettings
from eventstore.server import RunningServer, start
from eventstore.storage.cassandra import CassandraEventStorage, apply_schema

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def endpoints() -> dict[str, str]:
    """Bring up whatever is not running yet (idempotent) and return the endpoints in use."""
    stack.up()
    return stack.endpoints()


@pytest.fixture(scope="session")
def cassandra_hosts(endpoints: dict[str, str]) -> str:
    return endpoints["EVENTSTORE_CASSANDRA_HOSTS"]


@pytest.fixture(scope="session")
def created_keyspaces(cassandra_hosts: str) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    if names:
        settings = CassandraSettings(hosts=cassandra_hosts)
        hosts, port = settings.contact_points()
        cluster = Cluster(hosts, port=port)
        session = cluster.connect()
        for name in names:
            session.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=60)
        cluster.shutdown()


@pytest.fixture
async def cassandra_settings(
    cassandra_hosts: str, created_keyspaces: list[str]
) -> CassandraSettings:
    keyspace = f"test_{uuid.uuid4().hex[:12]}"
    settings = CassandraSettings(hosts=cassandra_hosts, keyspace=keyspace)
    await apply_schema(settings)
    created_keyspaces.append(keyspace)
    return settings


@pytest.fixture
async def cassandra_storage(
    cassandra_settings: CassandraSettings,
) -> AsyncIterator[CassandraEventStorage]:
    storage = await CassandraEventStorage.connect(cassandra_settings)
    yield storage
    await storage.close()


@pytest.fixture
async def server(
    cassandra_settings: CassandraSettings, cassandra_storage: CassandraEventStorage
) -> AsyncIterator[RunningServer]:
    settings = ServerSettings(listen="127.0.0.1:0", cassandra=cassandra_settings)
    running = await start(settings, storage=cassandra_storage)
    yield running
    await running.stop(grace=1)


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[EventStoreClient]:
    async with EventStoreClient(f"127.0.0.1:{server.port}") as c:
        yield c
