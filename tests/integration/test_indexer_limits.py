"""Invariants 10 and 11 at the indexer, on the real Kafka and OpenSearch: nothing the store
accepted wedges the indexer or ends only in the dead-letter topic.

* A backlog of near-limit events (about 1 MB each, incompressible) is indexed in bulk requests
  bounded by bytes, and, with the byte bound lifted (every batch in one request, as the indexer
  once did), OpenSearch's 413 / 429 answers split the requests until they fit; an unrelated
  small event appended behind the backlog becomes searchable too.
* Unusual but valid events (a JSON number beyond a double, a 40 KB metadata value, a ~1 MiB
  event, deep nesting) each become a document found by type, aggregate and time, whose
  `index_notes` say what was changed; a document OpenSearch refuses anyway is indexed in a
  reduced form. The dead-letter topic stays empty.

The indexer runs in-process (a thread), so that a test can read what it sent.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from eventstore.client import Event, EventStoreClient
from eventstore.config import KafkaSettings, OpenSearchSettings
from eventstore.publishing.kafka import ensure_topic
from eventstore.search.documents import INCOMPLETE_KEY, MAX_DEPTH, NOTES_FIELD, index_name
from eventstore.search.setup import ensure_template, make_client
from indexer.bulk import SPLITS
from indexer.config import IndexerSettings
from indexer.main import Indexer
from tests.integration.test_indexer import IndexerProcess, answered, count, distinct_ids
from tests.support import read_topic, unique

pytestmark = pytest.mark.integration

#: Events of about 990 KB: under the default 1 MiB limit (EVENTSTORE_LIMIT_MAX_EVENT_BYTES).
NEAR_LIMIT_BYTES = 990_000
BACKLOG = 64


class InProcessIndexer:
    def __init__(self, settings: IndexerSettings) -> None:
        self.indexer = Indexer(settings)
        self.thread = threading.Thread(target=self._run, name="indexer", daemon=True)

    def _run(self) -> None:
        try:
            self.indexer.run()
        except SystemExit:  # how it ends a wait when told to stop (main() exits on it)
            return

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.indexer.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the indexer did not stop"


StartIndexer = Callable[..., InProcessIndexer]


@pytest.fixture
async def start_indexer(
    kafka_settings: KafkaSettings, opensearch_settings: OpenSearchSettings
) -> AsyncIterator[StartIndexer]:
    started: list[InProcessIndexer] = []

    def start(**overrides: Any) -> InProcessIndexer:
        fields: dict[str, Any] = {
            "group_id": unique("indexer"),
            "kafka": kafka_settings,
            "opensearch": opensearch_settings,
            "state_interval_s": 0.5,
            "max_backoff_s": 1.0,
            **overrides,
        }
        running = InProcessIndexer(IndexerSettings(**fields))
        running.start()
        started.append(running)
        return running

    yield start
    for running in started:
        await asyncio.to_thread(running.stop)


def incompressible_json(size: int) -> bytes:
    """A JSON object of about `size` bytes of random base64 in 30,000-character strings (each
    within an index term, so the searchable copy keeps all of it)."""
    text = base64.b64encode(os.urandom(size * 3 // 4)).decode()[:size]
    parts = {f"c{i:03d}": text[i : i + 30_000] for i in range(0, len(text), 30_000)}
    return json.dumps(parts, separators=(",", ":")).encode()


NOT_YET = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
)


def records_in(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("watermarks")})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return 0
        total = 0
        for partition in metadata.partitions:
            try:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), 10)
            except KafkaException as exc:
                # A topic created a moment ago may have no leader yet: nothing readable yet.
                if exc.args[0].code() in NOT_YET:
                    return 0
                raise
            total += high - low
        return total
    finally:
        consumer.close()


async def until(what: str, check: Callable[[], Awaitable[bool]], within: float = 180) -> float:
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < within, f"not within {within} s: {what}"
        await asyncio.sleep(0.25)
    return time.monotonic() - started


def search(settings: OpenSearchSettings, body: dict[str, Any]) -> list[dict[str, Any]]:
    client = make_client(settings)

    def ask() -> list[dict[str, Any]]:
        client.indices.refresh(index=f"{settings.index_prefix}-*", ignore_unavailable=True)
        response = client.search(
            index=settings.alias, body=body, ignore_unavailable=True, allow_no_indices=True
        )
        return list(response["hits"]["hits"])

    try:
        return answered(ask)
    finally:
        client.close()


def no_dead_letters(kafka: KafkaSettings) -> None:
    letters = read_topic(kafka.bootstrap, kafka.dead_letter_topic, 0, timeout_s=10)
    assert letters == [], [dict(m.headers() or []) for m in letters]


async def append_backlog(client: EventStoreClient, kafka: KafkaSettings) -> list[Event]:
    events = [Event("Chunk", incompressible_json(NEAR_LIMIT_BYTES)) for _ in range(BACKLOG)]
    for i in range(0, BACKLOG, 4):  # four per append: within the 4 MiB append limit
        await client.append(f"big-{i // 4}", "Big", events[i : i + 4])

    async def published() -> bool:
        held = await asyncio.to_thread(records_in, kafka.bootstrap, kafka.topic("Big"))
        return held >= BACKLOG

    await until("the backlog is in Kafka", published, within=120)
    return events


async def test_a_backlog_of_near_limit_events_is_indexed_and_others_keep_flowing(
    client: EventStoreClient,
    start_indexer: StartIndexer,
    kafka_settings: KafkaSettings,
    opensearch_settings: OpenSearchSettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    backlog = await append_backlog(client, kafka_settings)
    assert all(len(e.payload()) > NEAR_LIMIT_BYTES for e in backlog)

    running = start_indexer()
    started = time.monotonic()
    small = Event("Small", {"hello": "world"})
    await client.append("small-1", "Other", [small])

    async def small_found() -> bool:
        page = await client.query_events(event_types=["Small"], visible_event_id=small.event_id)
        return page.freshness.event_visible

    async def all_indexed() -> bool:
        return await asyncio.to_thread(count, opensearch_settings) >= BACKLOG + 1

    await until("the small event is searchable", small_found)
    small_after = time.monotonic() - started
    await until("everything is indexed", all_indexed)
    took = time.monotonic() - started
    writer = running.indexer.writer
    with capsys.disabled():
        print(
            f"\nbacklog of {BACKLOG} x ~{NEAR_LIMIT_BYTES} B: indexed in {took:.1f} s "
            f"(small event searchable after {small_after:.1f} s); {writer.requests} bulk "
            f"requests, largest {writer.largest_request} B "
            f"(bound {running.indexer.settings.max_bulk_bytes} B)"
        )
    assert writer.largest_request <= running.indexer.settings.max_bulk_bytes
    assert writer.requests >= 2 * BACKLOG * NEAR_LIMIT_BYTES // writer.max_bulk_bytes

    # Found by type, aggregate type and time, and returned exactly (page of two: ~2 MB).
    after = datetime.now(UTC) + timedelta(seconds=1)
    found = await client.query_all(
        event_types=["Chunk"], aggregate_types=["Big"], start=before, end=after, page_size=2
    )
    assert sorted(str(e.event_id) for e in found) == sorted(str(e.event_id) for e in backlog)
    sent = {e.event_id: e.payload() for e in backlog}
    assert all(e.data == sent[e.event_id] for e in found)
    hits = await asyncio.to_thread(
        search, opensearch_settings, {"query": {"exists": {"field": NOTES_FIELD}}}
    )
    assert hits == []  # nothing had to change: every string fits a term, every document its cap
    await asyncio.to_thread(no_dead_letters, kafka_settings)


async def test_requests_opensearch_refuses_as_too_large_are_split_until_they_fit(
    client: EventStoreClient,
    start_indexer: StartIndexer,
    kafka_settings: KafkaSettings,
    opensearch_settings: OpenSearchSettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The indexer as it was: one bulk request per consumed batch, bounded only by count. The
    # backlog's documents (~2.3 MB each: payload and searchable copy) make a request of well
    # over OpenSearch's 100 MB (413), then halves over its indexing-pressure limit (429).
    await append_backlog(client, kafka_settings)
    splits_before = SPLITS._value.get()
    running = start_indexer(max_bulk_bytes=1024 * 1024 * 1024)

    async def all_indexed() -> bool:
        return await asyncio.to_thread(count, opensearch_settings) >= BACKLOG

    took = await until("the backlog is indexed", all_indexed)
    writer = running.indexer.writer
    splits = SPLITS._value.get() - splits_before
    with capsys.disabled():
        print(
            f"\nunbounded bulk: backlog indexed in {took:.1f} s; {writer.requests} requests, "
            f"largest {writer.largest_request} B, {splits:.0f} split"
        )
    assert splits >= 1
    assert writer.largest_request > 50 * 1024 * 1024
    assert await asyncio.to_thread(count, opensearch_settings) == BACKLOG
    await asyncio.to_thread(no_dead_letters, kafka_settings)


def nested(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = {"n": value}
    return value


async def test_unusual_valid_events_are_found_and_say_what_was_left_out(
    client: EventStoreClient,
    start_indexer: StartIndexer,
    kafka_settings: KafkaSettings,
    opensearch_settings: OpenSearchSettings,
) -> None:
    start_indexer()
    before = datetime.now(UTC) - timedelta(seconds=1)
    huge_number = Event("Priced", b'{"amount": 1e400, "currency": "EUR"}')
    long_metadata = Event("Traced", {"ok": True}, metadata={"trace": "t" * 40_000})
    blob = base64.b64encode(os.urandom(786_000)).decode()
    one_mib = Event("Uploaded", json.dumps({"blob": blob}).encode())
    # Deep, yet well within what OpenSearch parses: deeper levels are left out of the search
    # copy (flat_object recurses per level; 1,100 levels killed a node, 150 do not).
    deep = Event("Nested", nested(150))
    events = [huge_number, long_metadata, one_mib, deep]
    assert len(one_mib.payload()) + len("Uploaded") > 1_048_576 - 1_000  # ~1 MiB, the limit
    for i, event in enumerate(events):
        await client.append(f"odd-{i}", "Odd", [event])
    after = datetime.now(UTC) + timedelta(seconds=1)

    async def all_indexed() -> bool:
        return await asyncio.to_thread(count, opensearch_settings) >= len(events)

    await until("every event is indexed", all_indexed, within=60)

    for i, event in enumerate(events):
        found = await client.query_all(
            event_types=[event.event_type],
            aggregate_types=["Odd"],
            aggregate_id=f"odd-{i}",
            start=before,
            end=after,
        )
        assert [e.event_id for e in found] == [event.event_id]
        assert found[0].data == event.payload()  # the exact bytes: the payload fits
        assert dict(found[0].metadata) == dict(event.metadata)  # exact, no INCOMPLETE_KEY

    def notes_of(event: Event) -> list[str]:
        query = {"query": {"term": {"event_id": str(event.event_id)}}}
        (hit,) = search(opensearch_settings, query)
        return list(hit["_source"].get(NOTES_FIELD, []))

    assert await asyncio.to_thread(notes_of, huge_number) == [
        "data.amount: number 1e400 kept as text (beyond a double)"
    ]
    (note,) = await asyncio.to_thread(notes_of, long_metadata)
    assert note.startswith("metadata.trace: shortened to 32742 of 40000 bytes")
    (note,) = await asyncio.to_thread(notes_of, one_mib)
    assert note.startswith(f"data.blob: shortened to 32751 of {len(blob)} bytes")
    (note,) = await asyncio.to_thread(notes_of, deep)
    assert note.startswith("data" + ".n" * (MAX_DEPTH + 1) + ": ")
    assert f"left out (nested deeper than {MAX_DEPTH} levels)" in note

    # The searchable copies still answer: the number's text, the shortened metadata's prefix.
    by_number = {"query": {"term": {"data.amount": "1e400"}}}
    assert len(await asyncio.to_thread(search, opensearch_settings, by_number)) == 1
    by_trace = {"query": {"prefix": {"metadata.trace": "tttt"}}}
    assert len(await asyncio.to_thread(search, opensearch_settings, by_trace)) == 1
    await asyncio.to_thread(no_dead_letters, kafka_settings)


@pytest.mark.parametrize("refused_field", ["data", "payload"])
async def test_documents_opensearch_refuses_are_indexed_in_reduced_forms(
    refused_field: str,
    client: EventStoreClient,
    start_indexer: StartIndexer,
    kafka_settings: KafkaSettings,
    opensearch_settings: OpenSearchSettings,
) -> None:
    # This month's index exists already with a mapping that refuses our documents (as a hand-
    # made index might): `data` as a number refuses the full document, and the stored form
    # (no searchable copies) is indexed; `payload` as a number refuses the stored form too,
    # and the minimal form is indexed. Each says why; nothing is dead-lettered.
    month = index_name(opensearch_settings, datetime.now(UTC))
    admin = make_client(opensearch_settings)
    try:
        ensure_template(admin, opensearch_settings)  # the index gets the alias and the rest
        mapping = {"properties": {refused_field: {"type": "long"}}}
        admin.indices.create(index=month, body={"mappings": mapping})
    finally:
        admin.close()
    start_indexer()
    event = Event("Refused", {"a": 1}, metadata={"trace": "t-1"})
    await client.append("reduced-1", "Reduced", [event])

    async def indexed() -> bool:
        return await asyncio.to_thread(count, opensearch_settings) >= 1

    await until("the event is indexed", indexed, within=60)
    (found,) = await client.query_all(event_types=["Refused"], aggregate_id="reduced-1")
    assert found.event_id == event.event_id
    hits = await asyncio.to_thread(
        search, opensearch_settings, {"query": {"term": {"event_id": str(event.event_id)}}}
    )
    source = hits[0]["_source"]
    notes = source[NOTES_FIELD]
    assert "data" not in source
    assert "metadata" not in source
    if refused_field == "data":
        assert found.data == event.payload()  # the stored form keeps the exact bytes
        assert dict(found.metadata) == {"trace": "t-1"}
        assert notes[0].startswith(
            "data: not searchable (refused by OpenSearch: mapper_parsing_exception"
        )
    else:
        assert "payload" not in source
        assert notes[0].startswith("payload: left out (refused by OpenSearch: ")
        assert found.data == b""  # a query says what it could not return
        assert set(found.metadata) == {INCOMPLETE_KEY}
        assert "read the event from the store" in found.metadata[INCOMPLETE_KEY]
        (stored,) = await client.read_all("reduced-1")  # which has all of it
        assert stored.data == event.payload()
    await asyncio.to_thread(no_dead_letters, kafka_settings)


async def test_killed_during_a_backlog_of_large_and_odd_events_indexes_each_once(
    client: EventStoreClient,
    kafka_settings: KafkaSettings,
    opensearch_settings: OpenSearchSettings,
    tmp_path: Path,
) -> None:
    # Faults together (invariant 12): a backlog of near-limit events, events whose documents
    # must be changed, and a record that is not an event at all; the indexer process is killed
    # (SIGKILL) while it works through them and started again.
    topic = kafka_settings.topic("Junk")
    admin = AdminClient({"bootstrap.servers": kafka_settings.bootstrap})
    await ensure_topic(admin, topic, kafka_settings)
    producer = Producer({"bootstrap.servers": kafka_settings.bootstrap})
    producer.produce(topic, key=b"junk", value=b"\xff\x00 not an Event")
    assert producer.flush(10) == 0
    backlog = await append_backlog(client, kafka_settings)
    odd = [
        Event("Priced", b'{"amount": 1e400}'),
        Event("Traced", {"ok": True}, metadata={"trace": "t" * 40_000}),
        Event("Nested", nested(60)),
    ]
    await client.append("odd-1", "Odd", odd)
    total = len(backlog) + len(odd)

    process = IndexerProcess(kafka_settings, opensearch_settings, tmp_path / "indexer.log")
    try:
        await process.start(batch_size=16)

        async def started_indexing() -> bool:
            return await asyncio.to_thread(count, opensearch_settings) > 0

        await until("the indexer starts indexing", started_indexing, within=60)
        await process.kill()
        done = await asyncio.to_thread(count, opensearch_settings)
        assert done < total, "killed too late to prove anything"
        await process.start(batch_size=16)

        async def all_indexed() -> bool:
            return await asyncio.to_thread(count, opensearch_settings) >= total

        await until("everything is indexed", all_indexed)
        await asyncio.sleep(1.5)  # nothing more may arrive
    finally:
        await process.kill()
    assert await asyncio.to_thread(count, opensearch_settings) == total
    assert await asyncio.to_thread(distinct_ids, opensearch_settings) == total
    letters = await asyncio.to_thread(
        read_topic, kafka_settings.bootstrap, kafka_settings.dead_letter_topic, 1
    )
    # The junk record, possibly twice (killed after storing its letter, before committing).
    assert {m.value() for m in letters} == {b"\xff\x00 not an Event"}
    noted = {"query": {"exists": {"field": NOTES_FIELD}}, "size": 10}
    hits = await asyncio.to_thread(search, opensearch_settings, noted)
    assert sorted(h["_source"]["event_type"] for h in hits) == ["Nested", "Priced", "Traced"]
