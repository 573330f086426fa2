"""Indexing and query figures against the real local stack (make bench). Prints; asserts nothing.

1. Raw bulk load of synthetic events into an index built from our template (docs/s), up to
   --documents (1M by default; kept between runs, so later runs only query).
2. QueryEvents through the gRPC server on that index: pages of 100 by event type and a
   one-day window, and next pages by search_after (p50/p99).
3. The pipeline: events appended through the API, then the indexer started on them
   (docs/s from Kafka to searchable), then live appends polled until searchable (lag).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from opensearchpy import helpers

from benchmarks.support import free_port
from eventstore.client import Event, EventStoreClient
from eventstore.config import OpenSearchSettings
from eventstore.domain.events import RecordedEvent
from eventstore.search.documents import index_name, to_document
from eventstore.search.setup import ensure_template, make_client

EVENT_TYPES = [f"Event{i}" for i in range(10)]
AGGREGATE_TYPES = ["Order", "Payment", "Shipment", "Customer", "Invoice"]
DAYS = 30
START = datetime(2026, 10, 1, tzinfo=UTC)


def pct(samples: list[float]) -> str:
    q = statistics.quantiles(sorted(samples), n=100, method="inclusive")
    return (
        f"p50 {q[49] * 1000:7.1f} ms  p99 {q[98] * 1000:7.1f} ms  max {max(samples) * 1000:7.1f} ms"
    )


def synthetic(count: int, seed: int) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    span = DAYS * 86_400_000
    settings = OpenSearchSettings(index_prefix="bench-events")
    for i in range(count):
        recorded_at = START + timedelta(milliseconds=rng.randrange(span))
        event = RecordedEvent(
            event_id=uuid.UUID(int=rng.getrandbits(128)),
            aggregate_id=f"agg-{rng.randrange(100_000)}",
            aggregate_type=rng.choice(AGGREGATE_TYPES),
            version=1 + i % 50,
            event_type=rng.choice(EVENT_TYPES),
            data=b'{"amount": %d, "currency": "EUR", "note": "synthetic"}' % rng.randrange(10_000),
            content_type="application/json",
            metadata={"correlation_id": f"c-{rng.randrange(10**6)}"},
            recorded_at=recorded_at,
        )
        document = to_document(event)
        yield {
            "_index": index_name(settings, recorded_at),
            "_id": document["event_id"],
            "_source": document,
        }


def load(target: int) -> None:
    settings = OpenSearchSettings(
        index_prefix="bench-events",
        url=os.environ.get("EVENTSTORE_OPENSEARCH_URL", "http://127.0.0.1:9200"),
    )
    client = make_client(settings)
    ensure_template(client, settings)
    client.indices.refresh(index="bench-events-*", ignore_unavailable=True)
    have = int(
        client.count(index=settings.alias, ignore_unavailable=True, allow_no_indices=True)["count"]
    )
    if have >= target:
        print(f"index: {have} synthetic events already loaded", flush=True)
        return
    started = time.perf_counter()
    loaded = 0
    for ok, _ in helpers.parallel_bulk(
        client,
        synthetic(target - have, seed=have),
        thread_count=2,
        chunk_size=2000,
        request_timeout=120,
    ):
        loaded += ok
    client.indices.refresh(index="bench-events-*")
    took = time.perf_counter() - started
    print(
        f"raw bulk load: {loaded} documents in {took:.1f} s = {loaded / took:,.0f} docs/s "
        "(2 threads, chunks of 2000)",
        flush=True,
    )


async def start_process(module: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, env={**os.environ, **env}
    )


async def query_latency(queries: int) -> None:
    port = free_port()
    server = await start_process(
        "eventstore.server",
        {
            "EVENTSTORE_LISTEN": f"127.0.0.1:{port}",
            "EVENTSTORE_OPENSEARCH_INDEX_PREFIX": "bench-events",
            "EVENTSTORE_LOG_LEVEL": "WARNING",
            "EVENTSTORE_AUTH_DISABLED": "true",
        },
    )
    rng = random.Random(1)
    try:
        async with EventStoreClient(f"127.0.0.1:{port}") as client:
            for _ in range(100):
                try:
                    await client.query_events(page_size=1)
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    await asyncio.sleep(0.1)
            first, following, sizes = [], [], []
            for _ in range(queries):
                day = START + timedelta(days=rng.randrange(DAYS - 1))
                kwargs: dict[str, Any] = {
                    "event_types": [rng.choice(EVENT_TYPES)],
                    "start": day,
                    "end": day + timedelta(days=1),
                    "page_size": 100,
                }
                if rng.random() < 0.3:
                    kwargs["aggregate_types"] = [rng.choice(AGGREGATE_TYPES)]
                began = time.perf_counter()
                page = await client.query_events(**kwargs)
                first.append(time.perf_counter() - began)
                sizes.append(len(page.events))
                if page.next_page_token:
                    began = time.perf_counter()
                    await client.query_events(page_token=page.next_page_token, **kwargs)
                    following.append(time.perf_counter() - began)
            print(
                f"QueryEvents, first page of 100 (type + 1-day window), {queries} queries: "
                f"{pct(first)}  (mean {statistics.mean(sizes):.0f} events/page)"
            )
            print(
                f"QueryEvents, next page by search_after, {len(following)} queries: "
                f"{pct(following)}",
                flush=True,
            )
    finally:
        server.terminate()
        await server.wait()


async def pipeline(events: int, live: int) -> None:
    run = uuid.uuid4().hex[:8]
    port = free_port()
    env = {
        "EVENTSTORE_LISTEN": f"127.0.0.1:{port}",
        "EVENTSTORE_KAFKA_TOPIC_PREFIX": f"bench-{run}.",
        "EVENTSTORE_OPENSEARCH_INDEX_PREFIX": f"bench-pipe-{run}",
        "EVENTSTORE_INDEXER_GROUP_ID": f"bench-{run}",
        "EVENTSTORE_LOG_LEVEL": "WARNING",
        "EVENTSTORE_INDEXER_LOG_LEVEL": "WARNING",
        "EVENTSTORE_AUTH_DISABLED": "true",
    }
    settings = OpenSearchSettings(index_prefix=f"bench-pipe-{run}")
    os_client = make_client(settings)
    server = await start_process("eventstore.server", env)
    indexer = None
    try:
        async with EventStoreClient(f"127.0.0.1:{port}") as client:
            for _ in range(100):
                try:
                    await client.append(f"warm-{run}", "Bench", [Event("Warm", {})])
                    break
                except Exception:  # noqa: BLE001
                    await asyncio.sleep(0.1)
            appended = 1
            for i in range(events // 100):
                await client.append(
                    f"bulk-{i % 50}",
                    "Bench",
                    [Event("Loaded", {"i": i, "j": j}) for j in range(100)],
                )
                appended += 100
            await asyncio.sleep(2)  # let publication finish
            indexer = await start_process("indexer.main", env)
            began = time.perf_counter()
            while True:
                os_client.indices.refresh(
                    index=f"{settings.index_prefix}-*", ignore_unavailable=True
                )
                done = int(
                    os_client.count(
                        index=settings.alias, ignore_unavailable=True, allow_no_indices=True
                    )["count"]
                )
                if done >= appended:
                    break
                await asyncio.sleep(0.2)
            took = time.perf_counter() - began
            print(
                f"indexer: {appended} events from Kafka to searchable in {took:.1f} s = "
                f"{appended / took:,.0f} docs/s (start-up and group join included)",
                flush=True,
            )
            lags = []
            for i in range(live):
                result = await client.append(f"live-{i % 10}", "Bench", [Event("Live", {"i": i})])
                began = time.perf_counter()
                while not (  # noqa: ASYNC110 - polling the index is what is measured
                    await client.query_events(page_size=1, visible_event_id=result.event_ids[0])
                ).freshness.event_visible:
                    await asyncio.sleep(0.02)
                lags.append(time.perf_counter() - began)
                await asyncio.sleep(0.05)
            print(
                f"append → searchable (publication + indexer + 1 s refresh), {live} events: "
                f"{pct(lags)}",
                flush=True,
            )
    finally:
        for process in (indexer, server):
            if process is not None:
                process.terminate()
                await process.wait()
        os_client.indices.delete(index=f"{settings.index_prefix}*", ignore_unavailable=True)
        os_client.close()


async def main(args: argparse.Namespace) -> None:
    print(
        f"machine: {os.cpu_count()} cores; Cassandra, Kafka, OpenSearch (512 MB heap), "
        "server and indexer on one host",
        flush=True,
    )
    await asyncio.to_thread(load, args.documents)
    await query_latency(args.queries)
    await pipeline(args.pipeline_events, args.live)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--documents", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--pipeline-events", type=int, default=20_000)
    parser.add_argument("--live", type=int, default=100)
    asyncio.run(main(parser.parse_args()))
