"""The server's own connections with TLS and credentials, against the local stack's TLS
endpoints: Cassandra's native port takes TLS (optionally), Kafka has a SASL_SSL listener with
SCRAM-SHA-512 on 9094. (OpenSearch's TLS needs its security plugin, which the local stack does
not run; its settings are unit-tested.)"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._scram import (  # not re-exported for type checkers
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)

from devstack import stack
from devstack.certificates import make_ca
from eventstore.client import Event, EventStoreClient
from eventstore.config import CassandraSettings, KafkaSettings, ServerSettings
from eventstore.domain.errors import StorageUnavailable
from eventstore.domain.events import Direction, NewEvent
from eventstore.publishing.log import KafkaEventLog
from eventstore.server import RunningServer
from eventstore.storage.cassandra import CassandraEventStorage
from eventstore.usecases.append import utc_now_ms
from tests.integration.conftest import StartServer
from tests.integration.test_indexer import IndexerProcess, wait_for_count
from tests.integration.test_subscribe import Collector, events_at_least
from tests.support import header_map, read_topic, unique

pytestmark = pytest.mark.integration


def local_pki(variable: str) -> stack.Pki:
    if os.environ.get(variable):
        pytest.skip(f"{variable} names an external cluster")  # allowed-skip: CI runs the local one
    return stack.pki()


@pytest.fixture
def kafka_pki(endpoints: dict[str, str]) -> stack.Pki:
    return local_pki("EVENTSTORE_KAFKA_BOOTSTRAP")


@pytest.fixture
def cassandra_pki(endpoints: dict[str, str]) -> stack.Pki:
    return local_pki("EVENTSTORE_CASSANDRA_HOSTS")


def other_ca(directory: Path) -> Path:
    """A CA that signed nothing of the stack's."""
    return make_ca("other", directory, days=1)


@pytest.fixture
def scram_user(kafka_bootstrap: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A SCRAM-SHA-512 user made through the admin API (on the plaintext listener)."""
    user, password = unique("app"), secrets.token_urlsafe(16)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
    for future in admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion(user, info, password.encode())]
    ).values():
        future.result(timeout=30)
    password_file = tmp_path / "kafka-password"
    password_file.write_text(password + "\n")
    yield user, password_file
    for future in admin.alter_user_scram_credentials(
        [UserScramCredentialDeletion(user, ScramMechanism.SCRAM_SHA_512)]
    ).values():
        future.result(timeout=30)


def tls_kafka(base: KafkaSettings, pki: stack.Pki, user: str, password_file: Path) -> KafkaSettings:
    return base.model_copy(
        update={
            "bootstrap": stack.KAFKA_TLS_BOOTSTRAP,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": user,
            "sasl_password": None,
            "sasl_password_file": password_file,
            "ssl_ca_file": pki.ca,
        }
    )


async def test_the_server_and_the_indexer_use_kafka_over_sasl_ssl(
    server_settings: ServerSettings,
    start_server: StartServer,
    kafka_pki: stack.Pki,
    scram_user: tuple[str, Path],
    tmp_path: Path,
) -> None:
    user, password_file = scram_user
    # Read as the server would: through the settings' own validation (password from the file).
    kafka = KafkaSettings.model_validate(
        tls_kafka(server_settings.kafka, kafka_pki, user, password_file).model_dump()
    )
    assert kafka.sasl_password is not None
    running = await start_server(server_settings.model_copy(update={"kafka": kafka}))
    async with EventStoreClient(f"127.0.0.1:{running.port}") as client:
        for i in range(5):
            await client.append(f"order-{i}", "Order", [Event("Placed", {"i": i})])
        collector = Collector(client.subscribe(aggregate_types=["Order"]))
        try:
            await collector.wait_for(events_at_least(5))
            assert sorted(e.aggregate_id for e in collector.events) == [
                f"order-{i}" for i in range(5)
            ]
        finally:
            await collector.stop()
        # The indexer, configured through its environment as in production, consumes the same.
        indexer = IndexerProcess(kafka, running.settings.opensearch, tmp_path / "indexer.log")
        indexer.env.update(
            {
                "EVENTSTORE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "EVENTSTORE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "EVENTSTORE_KAFKA_SASL_USERNAME": user,
                "EVENTSTORE_KAFKA_SASL_PASSWORD_FILE": str(password_file),
                "EVENTSTORE_KAFKA_SSL_CA_FILE": str(kafka_pki.ca),
            }
        )
        await indexer.start()
        try:
            deadline = time.monotonic() + 60
            while len(await client.query_all(aggregate_types=["Order"])) < 5:
                assert time.monotonic() < deadline, indexer.log.read_text()[-2000:]
                await asyncio.sleep(0.5)
        finally:
            await indexer.kill()


async def test_a_wrong_kafka_password_or_ca_is_refused(
    kafka_settings: KafkaSettings,
    kafka_pki: stack.Pki,
    scram_user: tuple[str, Path],
    tmp_path: Path,
) -> None:
    user, password_file = scram_user
    wrong_password = tmp_path / "wrong"
    wrong_password.write_text("not-the-password")
    good = tls_kafka(kafka_settings, kafka_pki, user, password_file)
    for wrong in (
        good.model_copy(update={"sasl_password_file": wrong_password}),
        good.model_copy(update={"ssl_ca_file": other_ca(tmp_path)}),
    ):
        settings = KafkaSettings.model_validate(wrong.model_dump())
        with pytest.raises(StorageUnavailable):
            await KafkaEventLog(settings).open(frozenset({"Order"}), "beginning")


async def test_cassandra_over_tls_and_a_wrong_ca_is_refused(
    cassandra_settings: CassandraSettings, cassandra_pki: stack.Pki, tmp_path: Path
) -> None:
    settings = cassandra_settings.model_copy(update={"tls_ca_file": cassandra_pki.ca})
    storage = await CassandraEventStorage.connect(settings)
    try:
        event = NewEvent(uuid.uuid4(), "Placed", b"{}", "application/json")
        await storage.append("order-tls", "Order", 0, [event], utc_now_ms())
        (stored,) = await storage.read("order-tls", 1, Direction.FORWARDS, 10)
        assert stored.event_id == event.event_id
    finally:
        await storage.close()
    with pytest.raises(StorageUnavailable):
        await CassandraEventStorage.connect(
            cassandra_settings.model_copy(update={"tls_ca_file": other_ca(tmp_path)})
        )


async def test_republish_uses_the_kafka_security_settings(
    server: RunningServer,
    client: EventStoreClient,
    server_settings: ServerSettings,
    kafka_pki: stack.Pki,
    scram_user: tuple[str, Path],
    tmp_path: Path,
) -> None:
    """`republish` writes with the EVENTSTORE_KAFKA_* settings, as the server does; `--kafka`
    only names the bootstrap (it used to connect in plaintext whatever they said)."""
    kafka, opensearch = server_settings.kafka, server_settings.opensearch
    for i in range(3):
        await client.append(f"rebuild-{i}", "Rebuild", [Event("Happened", {"i": i})])
    indexer = IndexerProcess(kafka, opensearch, tmp_path / "indexer.log")
    await indexer.start()
    try:
        await wait_for_count(opensearch, 3)
    finally:
        await indexer.kill()
    user, password_file = scram_user
    target = f"{kafka.topic_prefix.rstrip('.')}-rebuild"  # deleted with the test's topics
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "replayer.main",
        "--server",
        f"127.0.0.1:{server.port}",
        "republish",
        "--aggregate-types",
        "Rebuild",
        "--topic",
        target,
        "--kafka",
        stack.KAFKA_TLS_BOOTSTRAP,
        "--checkpoint",
        str(tmp_path / "checkpoint.json"),
        env={
            **os.environ,
            "EVENTSTORE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "EVENTSTORE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "EVENTSTORE_KAFKA_SASL_USERNAME": user,
            "EVENTSTORE_KAFKA_SASL_PASSWORD_FILE": str(password_file),
            "EVENTSTORE_KAFKA_SSL_CA_FILE": str(kafka_pki.ca),
        },
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    records = await asyncio.to_thread(read_topic, kafka.bootstrap, target, 3)
    assert sorted(header_map(r)["event_id"].decode() for r in records) == sorted(
        str(e.event_id) for e in await client.query_all(aggregate_types=["Rebuild"])
    )
    assert len(records) == 3
