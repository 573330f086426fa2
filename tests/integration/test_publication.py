"""Invariant 7, first half: every committed event reaches Kafka at least once, in version order
per aggregate — also when the server dies right after the commit, or Kafka is down."""

from __future__ import annotations

import asyncio
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest
from confluent_kafka import Message

from devstack.proxy import FaultProxy
from eventstore.client import Event, EventStoreClient, RetryPolicy, UnavailableError
from eventstore.config import CassandraSettings, KafkaSettings, ServerSettings
from eventstore.server import RunningServer
from eventstore.wire.records import murmur2_partition
from tests.integration.test_restart import ServerProcess, free_port
from tests.support import decode, header_map, read_topic, unique

pytestmark = pytest.mark.integration


def first_copies_in_order(records: list[Message], aggregates: dict[str, list[str]]) -> None:
    """Each aggregate's first copies are its versions 1..N in order; any repeat is a copy of an
    earlier version (which consumers drop by (aggregate_id, version))."""
    seen: dict[str, list[int]] = defaultdict(list)
    for record in records:
        event = decode(record)
        versions = seen[event.aggregate_id]
        if event.version in versions:
            continue
        assert event.version == len(versions) + 1, (event.aggregate_id, versions, event.version)
        versions.append(event.version)
    for aggregate_id, ids in aggregates.items():
        assert seen[aggregate_id] == list(range(1, len(ids) + 1)), aggregate_id


async def test_committed_events_are_published_with_key_headers_and_value(
    client: EventStoreClient, kafka_settings: KafkaSettings
) -> None:
    aggregates: dict[str, list[str]] = {}
    for n in range(5):
        aggregate = unique("order")
        events = [Event("OrderPlaced", {"n": n}), Event("OrderPaid", {"n": n})]
        await client.append(aggregate, "Order", events, expected=0)
        await client.append(aggregate, "Order", [Event("OrderShipped", {})], expected=2)
        aggregates[aggregate] = [str(e.event_id) for e in events] + ["?"]
    topic = kafka_settings.topic("Order")
    records = await asyncio.to_thread(read_topic, kafka_settings.bootstrap, topic, 15)
    assert len(records) == 15
    first_copies_in_order(records, aggregates)
    record = records[0]
    event = decode(record)
    assert record.key() == event.aggregate_id.encode()
    assert record.partition() == murmur2_partition(record.key() or b"", kafka_settings.partitions)
    headers = header_map(record)
    assert headers["event_id"] == event.event_id.encode()
    assert headers["event_type"] == event.event_type.encode()
    assert headers["aggregate_type"] == b"Order"
    assert headers["version"] == str(event.version).encode()
    stored = await client.read_all(event.aggregate_id)
    assert stored[event.version - 1].data == event.data


async def test_crash_right_after_commit_loses_nothing(
    server_settings: ServerSettings, tmp_path: Path
) -> None:
    """SIGKILL between the Cassandra commit and the publish; after a restart it is in Kafka."""
    crashing = server_process(server_settings, tmp_path, failpoints="append.after_commit=crash")
    aggregate = unique("crash")
    events = [Event("Committed", {"i": i}) for i in range(3)]
    await crashing.start()
    async with EventStoreClient(crashing.address, retry=RetryPolicy(attempts=1)) as client:
        with pytest.raises(UnavailableError):
            await client.append(aggregate, "Crash", events, expected=0)
    assert crashing.process is not None
    assert await crashing.process.wait() == -9, "the failpoint must have killed the server"
    recovered = server_process(server_settings, tmp_path)
    await recovered.start()
    try:
        async with EventStoreClient(recovered.address) as client:
            stored = await client.read_all(aggregate)
        assert [e.event_id for e in stored] == [e.event_id for e in events], "it was committed"
        topic = server_settings.kafka.topic("Crash")
        records = await asyncio.to_thread(read_topic, server_settings.kafka.bootstrap, topic, 3)
        assert [decode(r).event_id for r in records] == [str(e.event_id) for e in events]
    finally:
        await recovered.kill()


def server_process(settings: ServerSettings, tmp_path: Path, failpoints: str = "") -> ServerProcess:
    proc = ServerProcess(settings.cassandra, free_port(), tmp_path / "server.log")
    proc.env.update(
        {
            "EVENTSTORE_KAFKA_BOOTSTRAP": settings.kafka.bootstrap,
            "EVENTSTORE_KAFKA_TOPIC_PREFIX": settings.kafka.topic_prefix,
            "EVENTSTORE_KAFKA_PARTITIONS": str(settings.kafka.partitions),
            "EVENTSTORE_RELAY_INTERVAL_S": "0.2",
            "EVENTSTORE_RELAY_TAKEOVER_AFTER_S": "1.0",
            "EVENTSTORE_FAILPOINTS": failpoints,
        }
    )
    return proc


async def test_kafka_outage_appends_succeed_and_everything_is_published_after(
    kafka_fault_proxy: FaultProxy,
    cassandra_settings: CassandraSettings,
    kafka_settings: KafkaSettings,
    tmp_path: Path,
) -> None:
    # The server reaches Kafka through a proxy that this test cuts: Kafka is down for the
    # server alone, and other tests sharing the broker go on.
    through_proxy = kafka_settings.model_copy(update={"bootstrap": kafka_fault_proxy.address})
    settings = ServerSettings(cassandra=cassandra_settings, kafka=through_proxy, auth_disabled=True)
    proc = server_process(settings, tmp_path)
    metrics_port = free_port()
    proc.env["EVENTSTORE_METRICS_PORT"] = str(metrics_port)
    await proc.start()
    aggregates: dict[str, list[str]] = defaultdict(list)
    try:
        async with EventStoreClient(proc.address) as client:

            async def append_some(round_: int) -> None:
                for a in range(4):
                    aggregate = f"outage-{a}"
                    events = [Event("Ticked", {"round": round_, "a": a})]
                    await client.append(aggregate, "Outage", events)
                    aggregates[aggregate] += [str(e.event_id) for e in events]

            await append_some(0)
            await kafka_fault_proxy.cut()
            try:
                for round_ in range(1, 6):
                    await append_some(round_)  # appends keep succeeding without Kafka
                await asyncio.sleep(1.5)  # the gauges are updated every second
                waiting = await asyncio.to_thread(
                    scrape, metrics_port, "eventstore_journal_open_entries"
                )
                assert waiting >= 1, "appends awaiting Kafka must be visible as a metric"
            finally:
                await kafka_fault_proxy.restore()
            for round_ in range(6, 8):
                await append_some(round_)
        topic = kafka_settings.topic("Outage")
        records = await asyncio.to_thread(read_topic, kafka_settings.bootstrap, topic, 32, 90)
        first_copies_in_order(records, aggregates)
        published = {decode(r).event_id for r in records}
        assert published == {i for ids in aggregates.values() for i in ids}
    finally:
        await proc.kill()


async def test_server_fixture_runs_the_relay(server: RunningServer) -> None:
    assert server.relay is not None
    assert not server.relay.done()


def scrape(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not exported")
