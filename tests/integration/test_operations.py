"""Running it: the metrics endpoint, and SIGTERM in the middle of a write load."""

from __future__ import annotations

import asyncio
import signal
import urllib.request
import uuid
from pathlib import Path

import pytest

from eventstore.client import (
    ClientError,
    Event,
    EventStoreClient,
    RetryPolicy,
    WrongExpectedVersionError,
)
from eventstore.config import ServerSettings
from eventstore.domain.events import Direction
from eventstore.storage.cassandra import CassandraEventStorage
from tests.integration.test_publication import server_process
from tests.integration.test_restart import free_port
from tests.support import decode, read_topic

pytestmark = pytest.mark.integration


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


def value(metrics: str, series: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not exported")


async def test_metrics_endpoint_serves_the_series(
    server_settings: ServerSettings, tmp_path: Path
) -> None:
    proc = server_process(server_settings, tmp_path)
    port = free_port()
    proc.env["EVENTSTORE_METRICS_PORT"] = str(port)
    await proc.start()
    try:
        async with EventStoreClient(proc.address) as client:
            for i in range(5):
                await client.append("metered", "Meter", [Event("Ticked", {"i": i})])
            with pytest.raises(WrongExpectedVersionError):
                await client.append("metered", "Meter", [Event("Late", {})], expected=1)
            stream = client.subscribe(aggregate_types=["Meter"])
            async for message in stream:
                if message.caught_up:
                    metrics = await asyncio.to_thread(scrape, port)
                    assert value(metrics, "eventstore_subscriptions_active") == 1
                    break
            await stream.aclose()  # type: ignore[attr-defined]
            await asyncio.sleep(1.5)  # gauges refresh every second
        metrics = await asyncio.to_thread(scrape, port)
        assert value(metrics, 'eventstore_rpc_requests_total{code="OK",method="Append"}') == 5
        assert (
            value(
                metrics, 'eventstore_rpc_requests_total{code="FAILED_PRECONDITION",method="Append"}'
            )
            == 1
        )
        assert value(metrics, "eventstore_append_conflicts_total") == 1
        assert value(metrics, 'eventstore_rpc_latency_seconds_count{method="Append"}') == 6
        assert value(metrics, "eventstore_publish_lag_seconds_count") >= 5
        assert value(metrics, "eventstore_unpublished_aggregates") == 0
        assert value(metrics, "eventstore_producer_queue_records") == 0
        assert value(metrics, "eventstore_subscriptions_active") == 0
        assert value(metrics, "eventstore_subscription_lag_records") == 0
    finally:
        await proc.kill()


async def test_sigterm_under_load_loses_no_acknowledged_append(
    server_settings: ServerSettings, cassandra_storage: CassandraEventStorage, tmp_path: Path
) -> None:
    proc = server_process(server_settings, tmp_path)
    proc.env["EVENTSTORE_GRACE_PERIOD_S"] = "5"
    await proc.start()
    acknowledged: list[uuid.UUID] = []
    refusals: set[str] = set()

    async def writer(n: int) -> None:
        async with EventStoreClient(proc.address, retry=RetryPolicy(attempts=1)) as client:
            for i in range(10_000):
                events = [Event("Loaded", {"w": n, "i": i}), Event("Loaded", {"w": n, "i": -i})]
                try:
                    await client.append(f"load-{n}", "Load", events)
                except ClientError as exc:
                    refusals.add(exc.code.name)
                    return
                acknowledged.extend(e.event_id for e in events)

    writers = [asyncio.create_task(writer(n)) for n in range(8)]
    await asyncio.sleep(1.5)
    assert proc.process is not None
    proc.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.process.wait(), 30) == 0, proc.log.read_text()[-2000:]
    await asyncio.gather(*writers)
    assert len(acknowledged) > 50
    # UNAVAILABLE from the drain or the closed port; CANCELLED for a call that crossed the
    # GOAWAY (gRPC's stop cancels calls that arrive after it began, before any handler ran:
    # nothing was written). The Python client retries both.
    assert refusals <= {"UNAVAILABLE", "CANCELLED"}, refusals
    stored = {
        e.event_id
        for n in range(8)
        for e in await cassandra_storage.read(f"load-{n}", 1, Direction.FORWARDS, 100_000)
    }
    assert set(acknowledged) <= stored, "an acknowledged append is missing"
    topic = server_settings.kafka.topic("Load")
    records = await asyncio.to_thread(
        read_topic, server_settings.kafka.bootstrap, topic, len(stored)
    )
    published = {uuid.UUID(decode(r).event_id) for r in records}
    assert stored <= published, "a committed event was not published before the server exited"
