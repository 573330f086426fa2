"""Real-service fixtures: the stack starts once per session (or the endpoint variables point at
existing clusters), and every test gets fresh names (keyspace, topic, index)."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import tempfile
import time
import urllib.parse
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from cassandra.cluster import Cluster, NoHostAvailable, Session
from confluent_kafka.admin import AdminClient

from devstack import kafka, stack
from devstack.processes import port_open
from devstack.proxy import FaultProxy
from eventstore.client import EventStoreClient, RetryPolicy
from eventstore.config import (
    CassandraSettings,
    KafkaSettings,
    OpenSearchSettings,
    RelaySettings,
    ServerSettings,
)
from eventstore.search.setup import make_client
from eventstore.server import RunningServer, start
from eventstore.storage.cassandra import CassandraEventStorage, schema_cql
from tests.integration.principals import Connect, default_keys, permissions_yaml
from tests.integration.test_indexer import IndexerProcess

pytestmark = pytest.mark.integration


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests through the Kafka fault proxy share its fixed port: under pytest-xdist
    (--dist loadgroup) they run one after another on one worker. The fixture also holds a
    machine-wide lock: another pytest on the machine, or a pytest whose grouping does not work
    (9.2.0 with xdist 3.8; tests/unit/test_test_grouping.py), must not take the port either."""
    for item in items:
        if "kafka_fault_proxy" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("kafka-fault-proxy"))


@pytest.fixture(scope="session")
def endpoints() -> dict[str, str]:
    """Bring up whatever is not running yet (idempotent) and return the endpoints in use."""
    stack.up()
    return stack.endpoints()


@pytest.fixture(scope="session")
def cassandra_hosts(endpoints: dict[str, str]) -> str:
    return endpoints["EVENTSTORE_CASSANDRA_HOSTS"]


def connect_patiently(contact: list[str], port: int) -> tuple[Cluster, Session]:
    """A session for fixtures. A session-scoped fixture that fails fails every test of its
    xdist worker (pytest caches the error): one connect that timed out while the host was at
    its busiest (the cluster starting beside the suite) once errored 172 tests. So: patient
    timeouts, and a few tries."""
    deadline = time.monotonic() + 120
    while True:
        cluster = Cluster(
            contact,
            port=port,
            protocol_version=5,
            connect_timeout=30,
            control_connection_timeout=30,
        )
        try:
            return cluster, cluster.connect()
        except NoHostAvailable:
            cluster.shutdown()
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


class KeyspacePool:
    """Every test gets an empty keyspace of its own: made once, emptied after each test, reused.

    Schema changes are slow and Cassandra makes them one at a time: creating a keyspace with
    its tables takes about 1.2 s and dropping it about 0.9 s, while truncating its tables takes
    about 0.4 s (the local node runs with auto_snapshot off). A keyspace goes back to the pool
    once its tables are truncated, on a background thread, while the next test runs on another
    one. A session keeps a few keyspaces (not one per test, which could exhaust the node's heap:
    every table costs memory) and drops them at its end.
    """

    def __init__(self, hosts: str) -> None:
        self._hosts = hosts
        settings = CassandraSettings(hosts=hosts)
        contact, port = settings.contact_points()
        self._cluster, self._session = connect_patiently(contact, port)
        # One thread: Cassandra makes schema changes one at a time anyway.
        self._work = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keyspace-pool")
        self._clean: deque[Future[CassandraSettings]] = deque()
        self._made: list[str] = []

    def _create(self) -> CassandraSettings:
        settings = CassandraSettings(hosts=self._hosts, keyspace=f"test_{uuid.uuid4().hex[:12]}")
        for statement in schema_cql(settings):
            self._session.execute(statement, timeout=120)
        self._made.append(settings.keyspace)
        return settings

    def _empty(self, settings: CassandraSettings) -> CassandraSettings:
        tables = self._session.execute(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s",
            (settings.keyspace,),
        )
        for row in tables:
            self._session.execute(f"TRUNCATE {settings.keyspace}.{row.table_name}", timeout=120)
        return settings

    def take(self) -> Future[CassandraSettings]:
        """A keyspace with every table empty (one more is made ready behind it)."""
        while len(self._clean) < 2:
            self._clean.append(self._work.submit(self._create))
        return self._clean.popleft()

    def give_back(self, settings: CassandraSettings) -> None:
        """The test (and every process it started) is done with it. It goes to the back: the
        next test takes the keyspace that is clean already while this one is emptied."""
        self._clean.append(self._work.submit(self._empty, settings))

    def close(self) -> None:
        for future in self._clean:
            future.result()
        for keyspace in self._made:
            self._session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=120)
        self._work.shutdown()
        self._cluster.shutdown()


@pytest.fixture(scope="session")
def keyspace_pool(cassandra_hosts: str) -> Iterator[KeyspacePool]:
    pool = KeyspacePool(cassandra_hosts)
    yield pool
    pool.close()


@pytest.fixture
async def cassandra_settings(keyspace_pool: KeyspacePool) -> AsyncIterator[CassandraSettings]:
    settings = await asyncio.wrap_future(keyspace_pool.take())
    yield settings
    keyspace_pool.give_back(settings)


@pytest.fixture
async def cassandra_storage(
    cassandra_settings: CassandraSettings,
) -> AsyncIterator[CassandraEventStorage]:
    storage = await CassandraEventStorage.connect(cassandra_settings)
    yield storage
    await storage.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(endpoints: dict[str, str]) -> str:
    return endpoints["EVENTSTORE_KAFKA_BOOTSTRAP"]


@pytest.fixture(scope="session")
def topic_prefixes(kafka_bootstrap: str) -> Iterator[list[str]]:
    """Topics of this session, deleted at its end."""
    prefixes: list[str] = []
    yield prefixes
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    stems = tuple(p.rstrip(".") for p in prefixes)
    topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(stems)]
    if topics:
        for future in admin.delete_topics(topics, operation_timeout=30).values():
            future.result()


@pytest.fixture
def kafka_settings(kafka_bootstrap: str, topic_prefixes: list[str]) -> KafkaSettings:
    prefix = f"test-{uuid.uuid4().hex[:10]}."
    topic_prefixes.append(prefix)
    return KafkaSettings(
        bootstrap=kafka_bootstrap,
        topic_prefix=prefix,
        partitions=3,
        dead_letter_topic=f"{prefix.rstrip('.')}-dead-letter",
        # Under the session's stem (deleted at its end), yet not under the event topics' prefix.
        group_topic_prefix=f"{prefix.rstrip('.')}-groups.",
    )


@pytest.fixture(scope="session")
def opensearch_url(endpoints: dict[str, str]) -> str:
    return endpoints["EVENTSTORE_OPENSEARCH_URL"]


@pytest.fixture(scope="session")
def index_prefixes(opensearch_url: str) -> Iterator[list[str]]:
    """Indices and templates of this session, deleted at its end."""
    prefixes: list[str] = []
    yield prefixes
    client = make_client(OpenSearchSettings(url=opensearch_url))
    for prefix in prefixes:
        client.indices.delete(index=f"{prefix}*", ignore_unavailable=True)
        client.indices.delete_index_template(name=f"{prefix}-template", ignore=[404])
    client.close()


@pytest.fixture
def opensearch_settings(opensearch_url: str, index_prefixes: list[str]) -> OpenSearchSettings:
    prefix = f"test-{uuid.uuid4().hex[:10]}-events"
    index_prefixes.append(prefix)
    return OpenSearchSettings(url=opensearch_url, index_prefix=prefix)


@pytest.fixture
def server_settings(
    cassandra_settings: CassandraSettings,
    kafka_settings: KafkaSettings,
    opensearch_settings: OpenSearchSettings,
) -> ServerSettings:
    return ServerSettings(
        listen="127.0.0.1:0",
        cassandra=cassandra_settings,
        kafka=kafka_settings,
        opensearch=opensearch_settings,
        relay=RelaySettings(interval_s=0.2, takeover_after_s=1.0),
        # Authentication has its own tests (test_security.py); the rest test everything else.
        auth_disabled=True,
    )


StartServer = Callable[[ServerSettings], Awaitable[RunningServer]]


@pytest.fixture
async def start_server(cassandra_settings: CassandraSettings) -> AsyncIterator[StartServer]:
    """Starts in-process servers through the production bootstrap (each connects to every real
    backend from its settings); stops them. The keyspace is the test's (`cassandra_settings`)."""
    started: list[RunningServer] = []

    async def start_one(settings: ServerSettings) -> RunningServer:
        running = await start(settings)
        started.append(running)
        return running

    yield start_one
    for running in started:
        await running.stop(grace=1)


@pytest.fixture
async def server(server_settings: ServerSettings, start_server: StartServer) -> RunningServer:
    return await start_server(server_settings)


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[EventStoreClient]:
    async with EventStoreClient(f"127.0.0.1:{server.port}") as c:
        yield c


# Authentication on: a permissions file of the principals in principals.py.


@pytest.fixture
def permissions(tmp_path: Path) -> Path:
    path = tmp_path / "permissions.yaml"
    path.write_text(permissions_yaml(default_keys(), {}))
    return path


@pytest.fixture
async def secure_server(
    server_settings: ServerSettings, start_server: StartServer, permissions: Path
) -> RunningServer:
    return await start_server(
        server_settings.model_copy(
            update={
                "auth_disabled": False,
                "permissions_file": permissions,
                "permissions_reload_s": 0.2,
                "subscription_heartbeat_s": 0.5,
            }
        )
    )


@pytest.fixture
async def connect(secure_server: RunningServer) -> AsyncIterator[Connect]:
    clients: list[EventStoreClient] = []

    def make(api_key: str | None = None, **options: object) -> EventStoreClient:
        options.setdefault("retry", RetryPolicy(attempts=1))  # see every refusal
        client = EventStoreClient(
            f"127.0.0.1:{secure_server.port}",
            api_key=api_key,
            timeout_s=10,
            **options,  # type: ignore[arg-type]
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


# Fault proxies: fail one test's connections to a shared service, never the service itself.
# Each proxy runs on the test's event loop, so blocking client calls made through it (a
# confluent_kafka flush, urllib) must run in a thread (asyncio.to_thread).


@pytest.fixture
async def opensearch_fault_proxy(opensearch_url: str) -> AsyncIterator[FaultProxy]:
    """A proxy in front of OpenSearch for this test alone: use f"http://{proxy.address}"."""
    upstream = urllib.parse.urlsplit(opensearch_url)
    async with FaultProxy(f"{upstream.hostname}:{upstream.port or 9200}") as proxy:
        yield proxy


#: One Kafka fault proxy per machine at a time (its port is fixed): every test process agrees.
FAULT_PROXY_LOCK = Path(tempfile.gettempdir()) / "eventstore-kafka-fault-proxy.lock"


@pytest.fixture
async def kafka_fault_proxy(kafka_bootstrap: str) -> AsyncIterator[FaultProxy]:
    """A proxy on the local Kafka's FAULTY listener: use `proxy.address` as the bootstrap.

    The broker advertises that listener at the proxy's fixed port, so only one such proxy can
    run on the machine at a time; a test in another process waits for it.
    """
    if os.environ.get("EVENTSTORE_KAFKA_BOOTSTRAP"):
        pytest.skip("an external Kafka has no FAULTY listener")  # allowed-skip: CI runs local
    host, _, port = kafka.FAULTY_LISTEN.rpartition(":")
    if not port_open(host, int(port)):
        pytest.fail(
            f"the local Kafka has no FAULTY listener on {kafka.FAULTY_LISTEN}: it was started "
            "before devstack added it; restart it (make services-down services-up)"
        )
    proxy = FaultProxy(kafka.FAULTY_LISTEN, int(kafka.FAULTY_BOOTSTRAP.rpartition(":")[2]))
    # Held for the whole test: waiting for the port alone let a test in another worker take
    # it while this one's proxy was cut, and this one could not restore it (seen in CI).
    with open(FAULT_PROXY_LOCK, "a") as lock:  # noqa: ASYNC230 - opening a lock file
        deadline = time.monotonic() + 600
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "another test held the Kafka fault proxy"
                await asyncio.sleep(0.2)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    await proxy.start()
                    break
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            try:
                yield proxy
            finally:
                await proxy.close()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture
async def indexer(
    kafka_settings: KafkaSettings, opensearch_settings: OpenSearchSettings, tmp_path: Path
) -> AsyncIterator[IndexerProcess]:
    """An indexer process on this test's topics and indices, started by the test (`start()`)."""
    proc = IndexerProcess(kafka_settings, opensearch_settings, tmp_path / "indexer.log")
    yield proc
    await proc.kill()
