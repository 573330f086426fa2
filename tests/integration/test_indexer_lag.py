"""The indexer's lag gauge, read from its /metrics as Prometheus scrapes it: it keeps counting
while the indexer is stuck on a batch (the alert on indexer lag depends on it), and a replica
reports only the partitions it owns (a sum over replicas counts each partition once)."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.proxy import FaultProxy
from eventstore.client import EventStoreClient
from eventstore.config import KafkaSettings, OpenSearchSettings
from tests.integration.test_indexer import IndexerProcess, append_many, wait_for_count
from tests.support import unique

pytestmark = pytest.mark.integration


Series = dict[tuple[str, str], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def lag_series(port: int, topic_prefix: str) -> Series:
    """This test's eventstore_indexer_lag series on an indexer's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.labels["topic"], sample.labels["partition"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "eventstore_indexer_lag"
        for sample in family.samples
        if sample.labels["topic"].startswith(topic_prefix)
    }


async def wait_for_lag(
    port: int, topic_prefix: str, satisfied: Callable[[Series], bool], within: float = 60
) -> Series:
    deadline = time.monotonic() + within
    while True:
        try:
            series = await asyncio.to_thread(lag_series, port, topic_prefix)
        except OSError:  # the indexer is still starting its metrics server
            series = {}
        if series and satisfied(series):
            return series
        assert time.monotonic() < deadline, f"lag never as expected: {series}"
        await asyncio.sleep(0.5)


def total(expected: int) -> Callable[[Series], bool]:
    return lambda series: sum(series.values()) == expected


def metered(
    kafka: KafkaSettings, opensearch: OpenSearchSettings, log: Path, group: str
) -> tuple[IndexerProcess, int]:
    indexer = IndexerProcess(kafka, opensearch, log)
    port = free_port()
    indexer.env["EVENTSTORE_INDEXER_METRICS_PORT"] = str(port)
    indexer.env["EVENTSTORE_INDEXER_GROUP_ID"] = group
    return indexer, port


async def test_lag_keeps_counting_while_a_batch_cannot_be_indexed(
    opensearch_fault_proxy: FaultProxy,
    client: EventStoreClient,
    kafka_settings: KafkaSettings,
    opensearch_settings: OpenSearchSettings,
    tmp_path: Path,
) -> None:
    # The gauge was set only between batches: while a bulk failed and was retried, it kept
    # its last value, so an OpenSearch outage read as "no lag" until it ended.
    through_proxy = opensearch_settings.model_copy(
        update={"url": f"http://{opensearch_fault_proxy.address}"}
    )
    indexer, port = metered(kafka_settings, through_proxy, tmp_path / "i.log", unique("lag"))
    await indexer.start(batch_size=50)
    try:
        indexed = await append_many(client, appends=4, per_append=5, tag="lag1")
        await wait_for_count(opensearch_settings, indexed)
        await wait_for_lag(port, kafka_settings.topic_prefix, total(0))
        await opensearch_fault_proxy.cut()
        try:
            behind = await append_many(client, appends=20, per_append=5, tag="lag2")
            # Everything appended during the outage is behind, counted from what is indexed
            # and committed (the batch the indexer holds and retries included).
            await wait_for_lag(port, kafka_settings.topic_prefix, total(behind))
        finally:
            await opensearch_fault_proxy.restore()
        await wait_for_count(opensearch_settings, indexed + behind)
        await wait_for_lag(port, kafka_settings.topic_prefix, total(0))
    finally:
        await indexer.kill()


async def test_a_replica_stops_reporting_partitions_it_no_longer_owns(
    client: EventStoreClient,
    kafka_settings: KafkaSettings,
    opensearch_settings: OpenSearchSettings,
    tmp_path: Path,
) -> None:
    # A partition revoked in a rebalance kept its last value in the old owner's gauge for
    # as long as that process lived: summed over replicas, it was counted twice.
    group = unique("lag")
    first, first_port = metered(kafka_settings, opensearch_settings, tmp_path / "1.log", group)
    second, second_port = metered(kafka_settings, opensearch_settings, tmp_path / "2.log", group)
    prefix = kafka_settings.topic_prefix
    try:
        appended = await append_many(client, appends=7, per_append=3, tag="owned")
        await first.start(batch_size=10)
        await wait_for_count(opensearch_settings, appended)
        every = await wait_for_lag(
            first_port, prefix, lambda series: len(series) == kafka_settings.partitions
        )
        await second.start(batch_size=10)
        await wait_for_lag(second_port, prefix, lambda series: len(series) > 0)
        deadline = time.monotonic() + 60
        while True:
            mine = await asyncio.to_thread(lag_series, first_port, prefix)
            theirs = await asyncio.to_thread(lag_series, second_port, prefix)
            # Both scraped mid-rebalance can hold neither's share yet: wait for the split.
            split = mine and theirs and not mine.keys() & theirs.keys()
            if split and mine.keys() | theirs.keys() == every.keys():
                break
            assert time.monotonic() < deadline, f"not split between them: {mine}, {theirs}"
            await asyncio.sleep(0.5)
    finally:
        await first.kill()
        await second.kill()
