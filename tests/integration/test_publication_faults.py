"""Publication under faults (issue 12, invariants 7, 10, 12), each on the real stack and each
failing on the former outbox design: a failing aggregate beside a crash, failed appends that
must leave no work behind, and a Kafka outage combined with a server crash."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from devstack.proxy import FaultProxy
from eventstore.client import (
    AggregateNotFoundError,
    Event,
    EventStoreClient,
    InvalidArgumentError,
    RetryPolicy,
    UnavailableError,
    WrongExpectedVersionError,
)
from eventstore.config import (
    CassandraSettings,
    KafkaSettings,
    OpenSearchSettings,
    ServerSettings,
)
from eventstore.domain.events import Direction
from eventstore.server import RunningServer
from eventstore.storage.cassandra import CassandraEventStorage
from eventstore.storage.connection import CassandraConnection
from eventstore.storage.outbox import CassandraPublicationLog
from replayer.verify import verify
from tests.integration.test_indexer import (
    IndexerProcess,
)
from tests.integration.test_publication import (
    scrape,
    server_process,
)
from tests.integration.test_restart import free_port
from tests.support import decode, read_topic, unique

pytestmark = pytest.mark.integration

FWD = Direction.FORWARDS


async def crash_after_commit(
    settings: ServerSettings, tmp_path: Path, aggregate: str, aggregate_type: str
) -> Event:
    """Append one event through a server that SIGKILLs itself right after the commit."""
    crashing = server_process(settings, tmp_path, failpoints="append.after_commit=crash")
    event = Event("Committed", {"aggregate": aggregate})
    await crashing.start()
    async with EventStoreClient(crashing.address, retry=RetryPolicy(attempts=1)) as client:
        with pytest.raises(UnavailableError):
            await client.append(aggregate, aggregate_type, [event], expected=0)
    assert crashing.process is not None
    assert await crashing.process.wait() == -9, "the failpoint must have killed the server"
    return event


async def test_an_unpublishable_aggregate_never_delays_another(
    server_settings: ServerSettings, tmp_path: Path
) -> None:
    """Two servers die right after committing: one aggregate whose topic cannot be created (a
    colliding topic someone made by hand), sorting first, and an ordinary one. The survivor
    publishes the ordinary one at once and parks the other, with the reason."""
    kafka = server_settings.kafka
    blocked_type = unique("Blocked").replace("-", ".")
    # Kafka refuses to create `…Blocked.x` next to `…Blocked_x` (same name to its metrics).
    admin = AdminClient(kafka.client_config())
    colliding = kafka.topic(blocked_type.replace(".", "_"))
    for future in admin.create_topics([NewTopic(colliding, 1, 1)]).values():
        await asyncio.wrap_future(future)
    blocked = unique("aaa")
    fine = unique("zzz")
    await crash_after_commit(server_settings, tmp_path, blocked, blocked_type)
    event = await crash_after_commit(server_settings, tmp_path, fine, "Order")

    survivor = server_process(server_settings, tmp_path)
    metrics_port = free_port()
    survivor.env["EVENTSTORE_METRICS_PORT"] = str(metrics_port)
    await survivor.start()
    try:
        started = asyncio.get_running_loop().time()
        records = await asyncio.to_thread(read_topic, kafka.bootstrap, kafka.topic("Order"), 1, 30)
        waited = asyncio.get_running_loop().time() - started
        assert [decode(r).event_id for r in records] == [str(event.event_id)]
        # takeover after 1 s of silence, a 0.2 s relay interval: well within a few seconds
        assert waited < 10, waited
        connection = await CassandraConnection.open(server_settings.cassandra)
        try:
            outbox = await CassandraPublicationLog.create(connection)
            for _ in range(50):
                parked = {p.aggregate_id: p for p in await outbox.parked()}
                if blocked in parked:
                    break
                await asyncio.sleep(0.2)
        finally:
            await connection.close()
        assert blocked in parked, "the failing aggregate must be listed for operators"
        assert "topic" in parked[blocked].reason, parked[blocked].reason
        await asyncio.sleep(1.5)  # gauges are updated every second
        assert await asyncio.to_thread(scrape, metrics_port, "eventstore_parked_aggregates") >= 1
        assert "aggregate parked" in survivor.log.read_text()
    finally:
        await survivor.kill()


async def test_failed_appends_leave_nothing_for_the_relay(
    server: RunningServer, client: EventStoreClient, kafka_settings: KafkaSettings
) -> None:
    """1,000 appends with absurd expected versions, refused partial retries and ANY appends
    answered already_committed: after one relay interval nothing of theirs remains open."""
    aggregate = unique("absurd")
    first = Event("Created", {})
    await client.append(aggregate, "Absurd", [first], expected=0)
    absurd = [random.randrange(2, 2**62) for _ in range(1000)]

    async def refused(version: int) -> None:
        with pytest.raises(WrongExpectedVersionError):
            await client.append(aggregate, "Absurd", [Event("Never", {})], expected=version)

    for chunk in range(0, len(absurd), 50):
        await asyncio.gather(*(refused(v) for v in absurd[chunk : chunk + 50]))
    again = await client.append(aggregate, "Absurd", [first])  # ANY, answered from storage
    assert again.already_committed
    publication = server.publication
    assert publication is not None
    await asyncio.sleep(server.settings.relay.interval_s * 2 + 0.5)
    assert publication.journal.open_entries == 0
    assert publication.journal.orphans() == []
    assert publication.backlog == 0
    assert publication.journal.settled_through == publication.journal.writes
    records = await asyncio.to_thread(
        read_topic, kafka_settings.bootstrap, kafka_settings.topic("Absurd"), 1, 15
    )
    assert [decode(r).version for r in records] == [1]


async def test_kafka_outage_with_a_server_crash_loses_no_acknowledged_event(
    kafka_fault_proxy: FaultProxy,
    cassandra_settings: CassandraSettings,
    kafka_settings: KafkaSettings,
    opensearch_settings: OpenSearchSettings,
    indexer: IndexerProcess,
    tmp_path: Path,
) -> None:
    """Kafka stopped for 20 s while 8 writers append to a brand-new aggregate type; during the
    outage the server they write to is SIGKILLed (its queued records die with it) and the
    writers move to a second one. After Kafka is back, every acknowledged event is stored, in
    Kafka (first copies in version order) and indexed exactly once: `verify` is the oracle."""
    # Every process of the store (servers, indexer) reaches Kafka through a proxy this test
    # cuts: Kafka is down for them alone; the checks afterwards read Kafka directly.
    through_proxy = kafka_settings.model_copy(update={"bootstrap": kafka_fault_proxy.address})
    settings = ServerSettings(cassandra=cassandra_settings, kafka=through_proxy, auth_disabled=True)
    indexer.env["EVENTSTORE_KAFKA_BOOTSTRAP"] = kafka_fault_proxy.address
    first = server_process(settings, tmp_path)
    second = server_process(settings, tmp_path)
    second.log = tmp_path / "second.log"
    await first.start()
    await second.start()
    await indexer.start()
    kind = unique("Outage").replace("-", "")
    acknowledged: dict[str, list[str]] = defaultdict(list)
    stop = asyncio.Event()
    retry = RetryPolicy(attempts=3, initial_backoff_s=0.05)
    clients = {
        first.address: EventStoreClient(first.address, retry=retry),
        second.address: EventStoreClient(second.address, retry=retry),
    }
    target = {"address": first.address}

    async def writer(w: int) -> None:
        n = 0
        while not stop.is_set():
            aggregate = f"{kind}-{w}-{n // 5}"
            event = Event("Ticked", {"w": w, "n": n})
            while not stop.is_set():
                try:
                    # The same event until acknowledged: a retry of an append whose outcome
                    # was unknown is answered from storage (idempotent), never duplicated.
                    await clients[target["address"]].append(aggregate, kind, [event])
                except (UnavailableError, ConnectionError, OSError):
                    await asyncio.sleep(0.05)
                    continue
                acknowledged[aggregate].append(str(event.event_id))
                n += 1
                break

    writers = [asyncio.create_task(writer(w)) for w in range(8)]
    try:
        await asyncio.sleep(1)
        await kafka_fault_proxy.cut()
        outage_started = asyncio.get_running_loop().time()
        try:
            await asyncio.sleep(8)
            await first.kill()  # with records queued for Kafka
            target["address"] = second.address
            await asyncio.sleep(max(20 - (asyncio.get_running_loop().time() - outage_started), 0))
        finally:
            await kafka_fault_proxy.restore()
        await asyncio.sleep(2)
        stop.set()
        await asyncio.gather(*writers)
        total = sum(len(ids) for ids in acknowledged.values())
        assert total > 100, "the writers must have kept appending through the outage"
        storage = await CassandraEventStorage.connect(cassandra_settings)
        try:
            stored: set[str] = set()
            for aggregate in acknowledged:
                stored |= {str(e.event_id) for e in await storage.read(aggregate, 1, FWD, 10_000)}
        finally:
            await storage.close()
        assert not {i for ids in acknowledged.values() for i in ids} - stored
        started = asyncio.get_running_loop().time()
        report = None
        while asyncio.get_running_loop().time() - started < 120:
            report = await verify(cassandra_settings, kafka_settings, opensearch_settings, kind)
            if report.ok and report.events >= total:
                break
            await asyncio.sleep(2)
        assert report is not None
        assert report.events >= total, "the catalog lists every aggregate written"
        assert report.ok, (report.missing_from_kafka(), report.missing_from_index())
        print(
            f"{total} acknowledged, {report.events} stored: all in Kafka and OpenSearch "
            f"{asyncio.get_running_loop().time() - started:.1f} s after the writers stopped"
        )
    finally:
        stop.set()
        for task in writers:
            task.cancel()
        for open_client in clients.values():
            await open_client.close()
        for proc in (first, second):
            if proc.process is not None and proc.process.returncode is None:
                await proc.kill()


async def test_types_sharing_a_topic_name_are_refused_before_anything_is_written(
    client: EventStoreClient,
) -> None:
    """`X.a` and `X_a` would be one Kafka topic to Kafka: the second type is refused, naming
    the field, and nothing of it is stored."""
    stem = unique("Col").replace("-", "")
    await client.append(unique("first"), f"{stem}.a", [Event("Created", {})], expected=0)
    refused = unique("second")
    with pytest.raises(InvalidArgumentError) as caught:
        await client.append(refused, f"{stem}_a", [Event("Created", {})], expected=0)
    assert caught.value.fields == ["aggregate_type"]
    assert f"{stem}.a" in str(caught.value)
    with pytest.raises(AggregateNotFoundError):
        await client.get_aggregate(refused)
