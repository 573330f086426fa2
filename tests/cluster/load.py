"""Concurrent write load with client retries, recorded as a `History`, and the read-back of
what Cassandra, Kafka and OpenSearch hold afterwards."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Sequence

from eventstore.client import (
    ClientError,
    Event,
    EventStoreClient,
    InvalidArgumentError,
    WrongExpectedVersionError,
)
from eventstore.config import CassandraSettings, KafkaSettings, OpenSearchSettings
from eventstore.domain.errors import StorageUnavailable
from eventstore.domain.events import Direction
from eventstore.search.setup import make_client
from eventstore.storage.cassandra import CassandraEventStorage
from tests.history import History, Holding, Op
from tests.integration.test_indexer import answered
from tests.support import decode, read_topic

AGGREGATE_TYPE = "Order"

#: A writer resends an unanswered append (same event ids) for this long before recording its
#: outcome as unknown: what an application with a durable outbox of its own would do.
RESOLVE_S = 90.0


class Load:
    """`writers` tasks, each the only writer of its own aggregates, appending 1-3 events at a
    time with the exact expected version, through clients spread over `targets`."""

    def __init__(self, targets: Sequence[str], writers: int = 8, aggregates_each: int = 2) -> None:
        self.history = History()
        self.targets = list(targets)
        self.writers = writers
        self.aggregates_each = aggregates_each
        self.run = uuid.uuid4().hex[:8]
        self.started = 0.0
        self.ended = 0.0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._clients: list[EventStoreClient] = []

    @property
    def aggregates(self) -> list[str]:
        return [
            f"order-{self.run}-{w}-{a}"
            for w in range(self.writers)
            for a in range(self.aggregates_each)
        ]

    async def __aenter__(self) -> Load:
        self._clients = [EventStoreClient(target) for target in self.targets]
        self.started = time.monotonic()
        self._tasks = [asyncio.create_task(self._writer(w)) for w in range(self.writers)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        self.ended = time.monotonic()
        for client in self._clients:
            await client.close()

    async def _writer(self, w: int) -> None:
        heads = {f"order-{self.run}-{w}-{a}": 0 for a in range(self.aggregates_each)}
        turn = 0
        while not self._stop.is_set() and heads:
            aggregate = list(heads)[turn % len(heads)]
            turn += 1
            client = self._clients[(w + turn) % len(self._clients)]
            op = await self._append(client, aggregate, heads[aggregate])
            if op.outcome == "ok":
                assert op.first_version is not None
                heads[aggregate] = op.first_version + len(op.event_ids) - 1
            elif op.outcome == "unknown":
                del heads[aggregate]  # its version is unknown: stop writing to it
            await asyncio.sleep(random.uniform(0, 0.02))

    async def _append(self, client: EventStoreClient, aggregate: str, head: int) -> Op:
        events = [Event("OrderPlaced", {"n": i}) for i in range(random.randint(1, 3))]
        op = Op(aggregate, tuple(str(e.event_id) for e in events), head, time.monotonic())
        self.history.ops.append(op)
        while True:
            op.attempts += 1
            try:
                result = await client.append(aggregate, AGGREGATE_TYPE, events, expected=head)
            except (WrongExpectedVersionError, InvalidArgumentError) as exc:
                op.outcome, op.error = "failed", f"{exc.code.name}: {exc.message}"
                break
            except ClientError as exc:  # no definite answer: resend the very same events
                op.error = f"{exc.code.name}: {exc.message}"
                if time.monotonic() - op.started > RESOLVE_S:
                    op.outcome = "unknown"
                    break
                client = self._clients[(self._clients.index(client) + 1) % len(self._clients)]
                await asyncio.sleep(0.2)
                continue
            op.outcome, op.first_version = "ok", result.first_version
            break
        op.ended = time.monotonic()
        return op


async def stored(settings: CassandraSettings, aggregates: Sequence[str]) -> Holding:
    """Every aggregate's events, read at QUORUM; a node that has just restarted may time out
    a read or two, which is asked again (the checker's reads are not what is under test)."""
    storage = await CassandraEventStorage.connect(
        settings.model_copy(update={"request_timeout_s": 30})
    )
    found: dict[str, list[tuple[int, str]]] = {}
    try:
        for aggregate in aggregates:
            for attempt in range(5):
                try:
                    events = await storage.read(aggregate, 1, Direction.FORWARDS, 100_000)
                    break
                except StorageUnavailable:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(2)
            found[aggregate] = [(e.version, str(e.event_id)) for e in events]
    finally:
        await storage.close()
    return found


def published(kafka: KafkaSettings, expected: int) -> Holding:
    records = read_topic(kafka.bootstrap, kafka.topic_prefix + AGGREGATE_TYPE, expected, 120)
    found: dict[str, list[tuple[int, str]]] = {}
    for record in records:
        event = decode(record)
        found.setdefault(event.aggregate_id, []).append((event.version, event.event_id))
    return found


async def indexed(
    opensearch: OpenSearchSettings,
    aggregates: Sequence[str],
    expected: int,
    timeout_s: float = 120,
) -> Holding:
    """Each aggregate's documents, once `expected` documents in all are searchable (or the time
    is up); asked per aggregate, each well under a search's 10,000 hits."""
    client = make_client(opensearch)
    index = f"{opensearch.index_prefix}-*"

    def count() -> int:
        client.indices.refresh(index=index, ignore_unavailable=True)
        found = client.count(index=index, ignore_unavailable=True, allow_no_indices=True)
        return int(found["count"])

    def documents(aggregate: str) -> list[tuple[int, str]]:
        body = {
            "size": 10_000,
            "_source": ["version", "event_id"],
            "query": {"term": {"aggregate_id": aggregate}},
        }
        hits = client.search(index=index, body=body)["hits"]["hits"]
        assert len(hits) < 10_000, f"{aggregate}: too many documents to list in one search"
        return [(int(h["_source"]["version"]), h["_source"]["event_id"]) for h in hits]

    deadline = time.monotonic() + timeout_s
    try:
        while await asyncio.to_thread(answered, count) < expected:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        return {
            aggregate: await asyncio.to_thread(answered, lambda a=aggregate: documents(a))
            for aggregate in aggregates
        }
    finally:
        client.close()
