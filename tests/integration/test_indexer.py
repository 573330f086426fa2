"""Invariant 7, second half: every event becomes exactly one OpenSearch document, also across
indexer crashes (SIGKILL) and OpenSearch outages; poison records go to the dead-letter topic."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from opensearchpy.exceptions import ConnectionTimeout, TransportError

from devstack.proxy import FaultProxy
from eventstore.client import Event, EventStoreClient, NotYetSearchableError
from eventstore.config import KafkaSettings, OpenSearchSettings
from eventstore.publishing.kafka import ensure_topic
from eventstore.search.setup import make_client
from eventstore.server import RunningServer
from tests.support import header_map, read_topic, unique

pytestmark = pytest.mark.integration

T = TypeVar("T")


class IndexerProcess:
    def __init__(self, kafka: KafkaSettings, opensearch: OpenSearchSettings, log: Path) -> None:
        self.env = {
            **os.environ,
            "EVENTSTORE_KAFKA_BOOTSTRAP": kafka.bootstrap,
            "EVENTSTORE_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
            "EVENTSTORE_KAFKA_DEAD_LETTER_TOPIC": kafka.dead_letter_topic,
            "EVENTSTORE_OPENSEARCH_URL": opensearch.url,
            "EVENTSTORE_OPENSEARCH_INDEX_PREFIX": opensearch.index_prefix,
            "EVENTSTORE_INDEXER_GROUP_ID": unique("indexer"),
            "EVENTSTORE_INDEXER_STATE_INTERVAL_S": "0.5",
            "EVENTSTORE_INDEXER_MAX_BACKOFF_S": "1",
        }
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, batch_size: int = 1000) -> None:
        self.env["EVENTSTORE_INDEXER_BATCH_SIZE"] = str(batch_size)
        with self.log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "indexer.main", env=self.env, stdout=out, stderr=out
            )

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()


def answered(call: Callable[[], T], within_s: float = 30) -> T:
    """OpenSearch answers 503 (all shards failed) for a moment while an index the indexer just
    created (the month's) has its shard starting, or right after a restart even once its health
    is yellow; and 429 (its parent circuit breaker), or no answer within the client's 10 s,
    while an indexer under test sends it requests of hundreds of MB: ask again rather than
    fail the test on it (what the tests assert is what is indexed in the end)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return call()
        except ConnectionTimeout:
            if time.monotonic() > deadline:
                raise
        except TransportError as exc:
            if exc.status_code not in (429, 503) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def count(settings: OpenSearchSettings) -> int:
    client = make_client(settings)

    def ask() -> int:
        client.indices.refresh(index=f"{settings.index_prefix}-*", ignore_unavailable=True)
        response = client.count(
            index=settings.alias, ignore_unavailable=True, allow_no_indices=True
        )
        return int(response["count"])

    try:
        return answered(ask)
    finally:
        client.close()


def distinct_ids(settings: OpenSearchSettings) -> int:
    # Exact, not the cardinality aggregation: that one is approximate (a run once counted 2,999
    # distinct ids among 3,000 documents of distinct event ids).
    client = make_client(settings)
    body = {"size": 10_000, "_source": ["event_id"], "track_total_hits": True}
    try:
        response = answered(lambda: client.search(index=settings.alias, body=body))
        assert response["hits"]["total"]["value"] <= 10_000, "too many documents to list"
        return len({hit["_source"]["event_id"] for hit in response["hits"]["hits"]})
    finally:
        client.close()


async def wait_for_count(settings: OpenSearchSettings, expected: int, within: float = 120) -> None:
    deadline = time.monotonic() + within
    while (found := await asyncio.to_thread(count, settings)) < expected:
        assert time.monotonic() < deadline, f"{found} of {expected} documents"
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.5)  # nothing more may arrive
    assert await asyncio.to_thread(count, settings) == expected


async def append_many(client: EventStoreClient, appends: int, per_append: int, tag: str) -> int:
    for i in range(appends):
        events = [Event("Indexed", {"tag": tag, "i": i, "j": j}) for j in range(per_append)]
        await client.append(f"{tag}-{i % 7}", "Indexed", events)
    return appends * per_append


async def test_appended_events_are_found_by_type_and_time(
    client: EventStoreClient, indexer: IndexerProcess, opensearch_settings: OpenSearchSettings
) -> None:
    await indexer.start()
    before = datetime.now(UTC) - timedelta(seconds=1)
    placed = [Event("OrderPlaced", {"n": i}) for i in range(30)]
    paid = [Event("OrderPaid", {"n": i}) for i in range(20)]
    for i in range(10):
        await client.append(
            f"order-{i}", "Order", placed[3 * i : 3 * i + 3] + paid[2 * i : 2 * i + 2]
        )
    middle = datetime.now(UTC)
    await asyncio.sleep(0.05)
    refunds = [Event("Refunded", {"n": i}) for i in range(7)]
    for i, refund in enumerate(refunds):
        await client.append(f"pay-{i}", "Payment", [refund])
    after = datetime.now(UTC) + timedelta(seconds=1)
    await wait_for_count(opensearch_settings, 57)

    async def found(**filters: object) -> list[str]:
        events = await client.query_all(page_size=7, **filters)
        return [str(e.event_id) for e in events]

    assert sorted(await found(event_types=["OrderPlaced"], start=before, end=after)) == sorted(
        str(e.event_id) for e in placed
    )
    assert len(await found(event_types=["OrderPaid"])) == 20
    assert len(await found(aggregate_types=["Payment"])) == 7
    assert len(await found(start=before, end=middle)) == 50
    assert len(await found(start=middle, end=after)) == 7
    assert len(await found(aggregate_id="order-3")) == 5
    page = await client.query_events(
        event_types=["Refunded"], visible_event_id=refunds[-1].event_id
    )
    assert page.freshness.event_visible
    assert page.freshness.indexer_lag == 0
    ordered = await client.query_all(start=before, end=after, page_size=11)
    keys = [(e.recorded_at, e.aggregate_id, e.version) for e in ordered]
    assert keys == sorted(keys)
    first = await client.read_all("order-0")
    queried = await client.query_all(aggregate_id="order-0")
    assert [(e.event_id, e.data, e.metadata) for e in queried] == [
        (e.event_id, e.data, e.metadata) for e in first
    ]


async def test_read_your_own_writes_with_a_consistency_token(
    client: EventStoreClient, indexer: IndexerProcess
) -> None:
    kind = unique("Own").replace("-", "")
    # No indexer yet: the write cannot become searchable, and the query says so at the
    # deadline the caller set, with the indexer's lag, instead of answering without it.
    early = await client.append(unique("own"), kind, [Event("Written", {"n": 0})])
    started = time.monotonic()
    with pytest.raises(NotYetSearchableError) as caught:
        await client.query_events(
            aggregate_types=[kind], min_consistency_token=early.consistency_token, timeout_s=1.0
        )
    assert 0.5 < time.monotonic() - started < 1.0  # answered before the deadline, not by it
    assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert caught.value.message.startswith("the write of min_consistency_token")
    await indexer.start()
    # Each query right after its append, no sleep: the token makes the server wait.
    for n in range(1, 6):
        written = await client.append(unique("own"), kind, [Event("Written", {"n": n})])
        page = await client.query_events(
            aggregate_types=[kind], min_consistency_token=written.consistency_token, timeout_s=60
        )
        assert written.event_ids[-1] in {e.event_id for e in page.events}
        assert early.event_ids[0] in {e.event_id for e in page.events}
        assert page.freshness.event_visible


async def test_indexer_killed_mid_stream_indexes_everything_once(
    client: EventStoreClient, indexer: IndexerProcess, opensearch_settings: OpenSearchSettings
) -> None:
    total = await append_many(client, appends=30, per_append=100, tag="kill")
    await indexer.start(batch_size=100)
    deadline = time.monotonic() + 60
    while (done := await asyncio.to_thread(count, opensearch_settings)) == 0:
        assert time.monotonic() < deadline, "the indexer never started indexing"
        await asyncio.sleep(0.05)
    await indexer.kill()
    assert done < total, "killed too late to prove anything; index more"
    await indexer.start(batch_size=100)
    await wait_for_count(opensearch_settings, total)
    assert await asyncio.to_thread(distinct_ids, opensearch_settings) == total


def progress_reports(settings: OpenSearchSettings) -> list[dict[str, Any]]:
    client = make_client(settings)
    try:
        client.indices.refresh(index=settings.state_index, ignore_unavailable=True)
        response = answered(
            lambda: client.search(
                index=settings.state_index, body={"size": 100}, ignore_unavailable=True
            )
        )
        return [hit["_source"] for hit in response["hits"]["hits"]]
    finally:
        client.close()


async def test_indexer_replicas_each_report_their_own_partitions(
    client: EventStoreClient,
    kafka_settings: KafkaSettings,
    opensearch_settings: OpenSearchSettings,
    tmp_path: Path,
) -> None:
    # Production runs two indexer replicas in one consumer group. They once wrote their
    # progress under the group id, each overwriting the other's: freshness then described
    # whichever wrote last, and its lag left out the other replica's partitions.
    replicas = [
        IndexerProcess(kafka_settings, opensearch_settings, tmp_path / f"indexer-{n}.log")
        for n in range(2)
    ]
    group = unique("indexers")
    total = await append_many(client, appends=21, per_append=5, tag="replicas")
    try:
        for replica in replicas:
            replica.env["EVENTSTORE_INDEXER_GROUP_ID"] = group
            await replica.start(batch_size=10)
        await wait_for_count(opensearch_settings, total)
        deadline = time.monotonic() + 60
        while True:
            reports = await asyncio.to_thread(progress_reports, opensearch_settings)
            owned = [{p["partition"] for p in r.get("partitions", [])} for r in reports]
            if len(owned) == 2 and all(owned) and not owned[0] & owned[1]:
                break
            assert time.monotonic() < deadline, f"replicas did not both report: {reports}"
            await asyncio.sleep(0.5)
        assert len(owned[0] | owned[1]) == kafka_settings.partitions
        page = await client.query_events(event_types=["Indexed"], page_size=1)
        assert page.freshness.indexer_lag == 0
    finally:
        for replica in replicas:
            await replica.kill()


async def test_opensearch_outage_loses_and_duplicates_nothing(
    opensearch_fault_proxy: FaultProxy,
    client: EventStoreClient,
    indexer: IndexerProcess,
    opensearch_settings: OpenSearchSettings,
) -> None:
    # The indexer reaches OpenSearch through a proxy this test cuts (others go on using it).
    indexer.env["EVENTSTORE_OPENSEARCH_URL"] = f"http://{opensearch_fault_proxy.address}"
    await indexer.start(batch_size=200)
    total = await append_many(client, appends=10, per_append=50, tag="os1")
    await wait_for_count(opensearch_settings, total)
    await opensearch_fault_proxy.cut()
    try:
        total += await append_many(client, appends=20, per_append=50, tag="os2")
        await asyncio.sleep(3)  # the indexer meets the outage and backs off
    finally:
        await opensearch_fault_proxy.restore()
    total += await append_many(client, appends=5, per_append=50, tag="os3")
    await wait_for_count(opensearch_settings, total)
    assert await asyncio.to_thread(distinct_ids, opensearch_settings) == total
    assert "bulk failed; retrying the same batch" in indexer.log.read_text()


async def test_poison_record_goes_to_dead_letters_and_indexing_continues(
    server: RunningServer,
    client: EventStoreClient,
    indexer: IndexerProcess,
    kafka_settings: KafkaSettings,
    opensearch_settings: OpenSearchSettings,
) -> None:
    topic = kafka_settings.topic("Poison")
    admin = AdminClient({"bootstrap.servers": kafka_settings.bootstrap})
    await ensure_topic(admin, topic, kafka_settings)
    producer = Producer({"bootstrap.servers": kafka_settings.bootstrap})
    producer.produce(topic, key=b"poison-1", value=b"\xff\x00 definitely not an Event")
    assert producer.flush(10) == 0
    await indexer.start()
    for i in range(5):
        await client.append(f"poison-{i}", "Poison", [Event("Fine", {"i": i})])
    await wait_for_count(opensearch_settings, 5)
    letters = await asyncio.to_thread(
        read_topic, kafka_settings.bootstrap, kafka_settings.dead_letter_topic, 1
    )
    assert len(letters) == 1
    headers = header_map(letters[0])
    assert letters[0].value() == b"\xff\x00 definitely not an Event"
    assert b"undecodable" in headers["reason"]
    assert headers["source_topic"] == topic.encode()
