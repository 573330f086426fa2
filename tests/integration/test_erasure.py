"""Crypto-shredding on the real stack: after EraseSubject, a byte scan of Cassandra's files
(flushed), Kafka's log segments and OpenSearch's index files finds no plaintext of the subject's
personal data; reads and queries still answer (redacted); a master key rotation re-wraps keys
without touching the events' bytes.

Each scan has a positive control: an event that is not personal carries a marker of its own,
which the same scan must find (so a scan that sees nothing, compressed or unflushed files,
cannot pass for a clean one)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.admin._resource import ResourceType

from devstack.locations import state_dir
from eventstore.client import Event, EventStoreClient
from eventstore.config import (
    CassandraSettings,
    KafkaSettings,
    OpenSearchSettings,
    PersonalDataSettings,
    ServerSettings,
)
from eventstore.domain import personal
from eventstore.keys_cli import rotate
from eventstore.publishing.kafka import ensure_topic
from eventstore.search.setup import make_client
from eventstore.storage.cassandra import CassandraEventStorage
from tests.integration.conftest import StartServer
from tests.integration.test_indexer import IndexerProcess, answered
from tests.support import unique

pytestmark = pytest.mark.integration

#: Tables whose files are scanned: uncompressed (LZ4 could hide a string from a byte scan) and
#: flushed every half second (the local stack opens no JMX for nodetool; a flush period is a
#: table option), for the test's keyspace only; put back afterwards.
SCANNED_TABLES = ("events", "snapshots", "subject_keys")
RESTORE = "compression = {'class': 'LZ4Compressor'} AND memtable_flush_period_in_ms = 0"
SCANNABLE = "compression = {'enabled': 'false'} AND memtable_flush_period_in_ms = 500"


def files_under(*roots: Path) -> Iterator[Path]:
    for root in roots:
        yield from (p for p in root.rglob("*") if p.is_file())


def holding(needle: bytes, *roots: Path) -> list[Path]:
    found = []
    for path in files_under(*roots):
        try:
            if needle in path.read_bytes():
                found.append(path)
        except FileNotFoundError:  # compacted away meanwhile
            continue
    return found


def stack_dir(*parts: str) -> Path:
    path = state_dir().joinpath(*parts)
    # The scans need the local stack's files: endpoints elsewhere cannot be scanned.
    assert path.is_dir(), f"{path} missing: these tests need the local stack (make services-up)"
    return path


def master_key(path: Path, seed: bytes) -> Path:
    path.write_text(base64.b64encode(seed * 32).decode())
    return path


@pytest.fixture
async def scannable(cassandra_storage: CassandraEventStorage) -> AsyncIterator[str]:
    session = cassandra_storage.connection.session
    keyspace = cassandra_storage.connection.settings.keyspace
    for table in SCANNED_TABLES:
        await asyncio.to_thread(session.execute, f"ALTER TABLE {keyspace}.{table} WITH {SCANNABLE}")
    yield keyspace
    for table in SCANNED_TABLES:
        await asyncio.to_thread(session.execute, f"ALTER TABLE {keyspace}.{table} WITH {RESTORE}")


async def uncompressed_topic(settings: KafkaSettings, topic: str) -> None:
    """The topic stored uncompressed (the broker recompresses what producers send in LZ4),
    so that a byte scan of its segments sees what the records hold."""
    admin = AdminClient(settings.client_config())
    await ensure_topic(admin, topic, settings)
    change = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry(
                "compression.type", "uncompressed", incremental_operation=AlterConfigOpType.SET
            )
        ],
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            await asyncio.to_thread(admin.incremental_alter_configs([change])[change].result, 15)
            return
        except KafkaException:
            # A topic just created is unknown to some brokers for a moment.
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def documents(settings: OpenSearchSettings, query: dict[str, object]) -> int:
    client = make_client(settings)
    try:

        def ask() -> int:
            client.indices.refresh(index=f"{settings.index_prefix}-*", ignore_unavailable=True)
            response = client.count(
                index=settings.alias,
                body={"query": query},
                ignore_unavailable=True,
                allow_no_indices=True,
            )
            return int(response["count"])

        return answered(ask)
    finally:
        client.close()


def index_dirs(settings: OpenSearchSettings) -> list[Path]:
    client = make_client(settings)
    try:
        client.indices.flush(index=f"{settings.index_prefix}-*", ignore_unavailable=True)
        found = client.cat.indices(index=f"{settings.index_prefix}-*", format="json")
    finally:
        client.close()
    root = stack_dir("opensearch", "data")
    return [d for entry in found for d in root.rglob(entry["uuid"]) if d.is_dir()]


async def wait_for(check: object, within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.5)


async def test_after_erasure_no_store_holds_the_subjects_plaintext(
    server_settings: ServerSettings,
    start_server: StartServer,
    scannable: str,
    kafka_settings: KafkaSettings,
    opensearch_settings: OpenSearchSettings,
    indexer: IndexerProcess,
    tmp_path: Path,
) -> None:
    secret = unique("secret-name").encode()
    street = unique("secret-street").encode()
    control = unique("control-note").encode()
    subject = unique("person")
    running = await start_server(
        server_settings.model_copy(
            update={
                "personal": PersonalDataSettings(
                    master_key_file=master_key(tmp_path / "master.key", b"m")
                )
            }
        )
    )
    await uncompressed_topic(kafka_settings, kafka_settings.topic("User"))
    await indexer.start()
    about = {"data_subject": subject}
    async with EventStoreClient(f"127.0.0.1:{running.port}") as client:
        await client.append(
            "user-1",
            "User",
            [
                Event("Registered", {"name": secret.decode()}, about),
                Event("Noted", {"note": control.decode()}),
                Event(
                    "Moved",
                    {"street": street.decode(), "city": "Paris"},
                    {**about, "personal_fields": "street"},
                ),
            ],
        )
        # A snapshot is derived from the events: sealed like them.
        state = b'{"name": "%s"}' % secret
        await client.save_snapshot("user-1", 2, state, "UserState")
        assert (await client.get_snapshot("user-1") or pytest.fail("no snapshot")).state == state
        read = [e async for e in client.read("user-1")]
        assert secret in read[0].data
        assert street in read[2].data
        await wait_for(lambda: documents(opensearch_settings, {"match_all": {}}) == 3)
        queried = await client.query_all(aggregate_types=["User"])
        assert secret in queried[0].data  # opened from the document's sealed payload

        receipt = await client.erase_subject(subject)
        done = {step.store: step.count for step in receipt.steps}
        assert receipt.key_destroyed
        assert done["opensearch"] == 2
        assert done["cassandra.snapshots"] == 1
        assert documents(opensearch_settings, {"match_all": {}}) == 1  # the control's

        # Reads and queries still answer, redacted.
        after = [e async for e in client.read("user-1")]
        assert [e.version for e in after] == [1, 2, 3]
        assert after[0].data == b""
        assert after[0].metadata[personal.REDACTED_KEY] == "erased"
        assert after[1].data == read[1].data
        assert b'"street":null' in after[2].data
        assert b"Paris" in after[2].data
        assert len(await client.query_all(aggregate_types=["User"])) == 1

    # Cassandra: the test keyspace's files, flushed (the control proves it), and the commit log.
    cassandra_data = stack_dir("cassandra", "data", scannable)
    await wait_for(lambda: holding(control, cassandra_data), within_s=30)
    commitlog = stack_dir("cassandra", "commitlog")
    assert holding(secret, cassandra_data, commitlog) == []
    assert holding(street, cassandra_data, commitlog) == []
    # Kafka: the topic's log segments.
    topic = kafka_settings.topic("User")
    segments = [d for d in stack_dir("kafka", "data").iterdir() if d.name.startswith(topic + "-")]
    assert segments
    assert holding(control, *segments)
    assert holding(secret, *segments) == []
    assert holding(street, *segments) == []
    # OpenSearch: the test's indices (translog and segments).
    indices = index_dirs(opensearch_settings)
    assert indices
    assert holding(control, *indices)
    assert holding(secret, *indices) == []
    assert holding(street, *indices) == []


async def test_a_master_key_rotation_leaves_the_events_bytes_alone(
    server_settings: ServerSettings,
    start_server: StartServer,
    cassandra_storage: CassandraEventStorage,
    cassandra_settings: CassandraSettings,
    tmp_path: Path,
) -> None:
    old = master_key(tmp_path / "old.key", b"o")
    new = master_key(tmp_path / "new.key", b"n")
    secret = unique("secret").encode()
    first = await start_server(
        server_settings.model_copy(update={"personal": PersonalDataSettings(master_key_file=old)})
    )
    async with EventStoreClient(f"127.0.0.1:{first.port}") as client:
        await client.append(
            "user-1",
            "User",
            [Event("Registered", {"name": secret.decode()}, {"data_subject": "p"})],
        )
    session = cassandra_storage.connection.session
    keyspace = cassandra_settings.keyspace

    def stored() -> list[tuple[object, ...]]:
        rows = session.execute(
            f"SELECT version, data, metadata FROM {keyspace}.events WHERE aggregate_id = 'user-1'"
        )
        return [(row["version"], row["data"], row["metadata"]) for row in rows]

    before = await asyncio.to_thread(stored)
    keys_before = await asyncio.to_thread(
        lambda: session.execute(f"SELECT master_key_id FROM {keyspace}.subject_keys").one()
    )
    done = await rotate(
        cassandra_settings,
        PersonalDataSettings(master_key_file=new, previous_master_key_file=old),
    )
    assert done.rewrapped == 1
    keys_after = await asyncio.to_thread(
        lambda: session.execute(f"SELECT master_key_id FROM {keyspace}.subject_keys").one()
    )
    assert keys_after["master_key_id"] != keys_before["master_key_id"]
    assert await asyncio.to_thread(stored) == before
    second = await start_server(
        server_settings.model_copy(update={"personal": PersonalDataSettings(master_key_file=new)})
    )
    async with EventStoreClient(f"127.0.0.1:{second.port}") as client:
        read = [e async for e in client.read("user-1")]
        assert secret in read[0].data


async def test_subscriptions_open_sealed_events_and_redact_erased_ones(
    server_settings: ServerSettings, start_server: StartServer, tmp_path: Path
) -> None:
    """Subscribe over Kafka (a type) and over Cassandra (one aggregate): Kafka holds the
    sealed record, the subscriber gets it opened, and after erasure redacted."""
    running = await start_server(
        server_settings.model_copy(
            update={
                "personal": PersonalDataSettings(
                    master_key_file=master_key(tmp_path / "master.key", b"s")
                )
            }
        )
    )
    secret = unique("secret").encode()
    async with EventStoreClient(f"127.0.0.1:{running.port}") as client:
        event = Event("Registered", {"name": secret.decode()}, {"data_subject": "p-sub"})
        await client.append("user-1", "User", [event])

        async def first_event(**where: object) -> bytes:
            async for message in client.subscribe(**where):  # type: ignore[arg-type]
                if message.event is not None:
                    return message.event.data
            raise AssertionError("the subscription ended")

        for where in ({"aggregate_types": ["User"]}, {"aggregate_id": "user-1"}):
            assert secret in await asyncio.wait_for(first_event(**where), 30)
        await client.erase_subject("p-sub")
        for where in ({"aggregate_types": ["User"]}, {"aggregate_id": "user-1"}):
            assert await asyncio.wait_for(first_event(**where), 30) == b""


async def test_another_replica_stops_opening_within_the_key_cache_ttl(
    server_settings: ServerSettings, start_server: StartServer, tmp_path: Path
) -> None:
    """Two servers on one keyspace: one erases; the other, which has the key cached, opens
    the subject's events at most EVENTSTORE_SUBJECT_KEY_CACHE_S longer (1 s here)."""
    settings = server_settings.model_copy(
        update={
            "personal": PersonalDataSettings(
                master_key_file=master_key(tmp_path / "master.key", b"r"), subject_key_cache_s=1
            )
        }
    )
    one, other = await start_server(settings), await start_server(settings)
    secret = unique("secret").encode()
    async with (
        EventStoreClient(f"127.0.0.1:{one.port}") as eraser,
        EventStoreClient(f"127.0.0.1:{other.port}") as reader,
    ):
        event = Event("Registered", {"name": secret.decode()}, {"data_subject": "p-ttl"})
        await eraser.append("user-1", "User", [event])

        async def read(client: EventStoreClient = reader) -> bytes:
            events = [e async for e in client.read("user-1")]
            return events[0].data

        assert secret in await read()  # the other server now has the key cached
        await eraser.erase_subject("p-ttl")
        erased_at = time.monotonic()
        while await read() != b"":
            assert time.monotonic() - erased_at < 1.0 + 0.5, "still opened past the TTL"
            await asyncio.sleep(0.05)
        assert await read(eraser) == b""
