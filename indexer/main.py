"""eventstore-indexer: Kafka event topics → OpenSearch, exactly one document per event.

* Consumer group over every topic with the event prefix (a regex subscription: topics of new
  aggregate types are picked up without a restart).
* Each batch goes out in bulk requests of at most EVENTSTORE_INDEXER_MAX_BULK_BYTES; document
  _id = a hash of (aggregate id, version) (`document_id`), index = the event's month, so a
  re-delivered event overwrites its own document, never a duplicate, and never another
  aggregate's event that happens to carry the same client-chosen event id.
* Offsets are committed only after every document of the batch is indexed (and any dead
  letters stored). OpenSearch unavailable: the partitions are paused (we keep polling, so the
  group keeps us) and the same requests are retried with backoff.
* Nothing wedges the indexer (indexer/bulk.py): a request refused as too large is split, a
  document refused for its content is indexed again in a reduced form that says why
  (`index_notes`). Only a record that cannot be decoded, or whose minimal document is refused
  too, goes to the dead-letter topic with the reason; indexing goes on.
* Lag per partition and last indexed offset are Prometheus metrics; each instance also writes
  a progress report of its own partitions to the state index (eventstore/search/progress.py),
  where the query API reads how fresh the index is.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from google.protobuf.message import DecodeError
from opensearchpy import OpenSearch
from opensearchpy.exceptions import ConnectionError as OpenSearchConnectionError
from opensearchpy.exceptions import TransportError
from prometheus_client import Counter, Gauge, start_http_server

from eventstore import tracing
from eventstore.config import ConfigError, TracingSettings, load
from eventstore.observability import configure_logging
from eventstore.ports import PublishFailed
from eventstore.publishing.kafka import ensure_topic
from eventstore.search.documents import index_name
from eventstore.search.progress import PartitionProgress, ProgressReport, partition_key
from eventstore.search.setup import ensure_template, make_client
from eventstore.wire.records import decode_event
from indexer.bulk import BulkWriter, Item, make_item
from indexer.config import IndexerSettings

log = structlog.get_logger("indexer")

DEAD_LETTERS = Counter("eventstore_indexer_dead_letters", "Records sent to the dead-letter topic")
LAG = Gauge(
    "eventstore_indexer_lag", "Records behind the end of the partition", ["topic", "partition"]
)
LAST_OFFSET = Gauge("eventstore_indexer_last_offset", "Last offset indexed", ["topic", "partition"])


@dataclass
class Poison:
    message: Message
    reason: str


class Indexer:
    def __init__(self, settings: IndexerSettings, client: OpenSearch | None = None) -> None:
        self.settings = settings
        self.client = client or make_client(settings.opensearch)
        kafka = settings.kafka
        self.consumer = Consumer(
            {
                **kafka.client_config(),
                "group.id": settings.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "topic.metadata.refresh.interval.ms": 5000,
                # Take a record of any size the store accepts (librdkafka's default fetch).
                **kafka.consumer_size_config(fetch_max_bytes=50 * 1024 * 1024),
                "log_level": 3,
            }
        )
        self.dead_letters = Producer(
            {
                **kafka.client_config(),
                "enable.idempotence": True,
                "acks": "all",
                "message.timeout.ms": 30_000,
                # A dead letter is a record as large as any we consume (produce() would refuse
                # a larger one for good, and the batch would never be committed).
                "message.max.bytes": kafka.max_message_bytes,
            }
        )
        self.writer = BulkWriter(
            self._send, self._wait, settings.max_bulk_bytes, settings.max_document_bytes
        )
        self.stop = threading.Event()
        # One progress report per indexer instance (each knows only its own partitions).
        self.instance = f"{settings.group_id}-{uuid.uuid4().hex[:12]}"
        #: per partition_key, the newest recorded_at indexed (reported with the lag)
        self.indexed_through: dict[str, datetime] = {}
        #: per (topic, partition) we own, the next offset to index, as we last committed it:
        #: the consumer's position runs ahead of it by the batch being written.
        self.committed: dict[tuple[str, int], int] = {}
        self._next_state = 0.0
        self._next_gauges = 0.0

    # --- lifecycle ---------------------------------------------------------------------

    def setup(self) -> None:
        self._retry(
            "put the index template", lambda: ensure_template(self.client, self.settings.opensearch)
        )
        kafka = self.settings.kafka
        admin = AdminClient(kafka.client_config())
        # Kafka may be down or restarting as we start: wait for it (a crash loop helps nobody).
        self._retry(
            "create the dead-letter topic",
            lambda: asyncio.run(ensure_topic(admin, kafka.dead_letter_topic, kafka)),
        )
        pattern = f"^{re.escape(self.settings.kafka.topic_prefix)}.*"
        self.consumer.subscribe([pattern], on_revoke=self._forget, on_lost=self._forget)
        log.info("indexer subscribed", pattern=pattern, group=self.settings.group_id)

    def run(self) -> None:
        self.setup()
        try:
            while not self.stop.is_set():
                messages = self.consumer.consume(self.settings.batch_size, timeout=0.5)
                batch = [m for m in messages if not m.error()]
                if batch:
                    self.process(batch)
                self._report()
        finally:
            self.consumer.close()
            self.dead_letters.flush(10)

    # --- one batch ---------------------------------------------------------------------

    def process(self, batch: list[Message]) -> None:
        poison: list[Poison] = []
        newest: dict[str, datetime] = {}

        def items() -> Iterator[Item]:
            # A generator: documents are built one request's worth at a time, not all at once.
            for message in batch:
                try:
                    event = decode_event(bytes(message.value() or b""))
                except (DecodeError, ValueError, UnicodeDecodeError) as exc:
                    reason = f"undecodable: {type(exc).__name__}: {exc}"[:500]
                    poison.append(Poison(message, reason))
                    continue
                index = index_name(self.settings.opensearch, event.recorded_at)
                yield make_item(message, event, index, self.settings.max_document_bytes)
                key = partition_key(message.topic() or "", message.partition() or 0)
                if key not in newest or event.recorded_at > newest[key]:
                    newest[key] = event.recorded_at

        refused = self.writer.write(items())
        for key, recorded_at in newest.items():  # indexed now (or dead-lettered below)
            if key not in self.indexed_through or recorded_at > self.indexed_through[key]:
                self.indexed_through[key] = recorded_at
        poison += [Poison(r.item.source, r.reason) for r in refused]
        if poison:
            self._dead_letter(poison)
        self._commit(batch)

    def _send(self, body: bytes) -> dict[str, Any]:
        response: dict[str, Any] = self.client.bulk(body=body)
        return response

    def _dead_letter(self, poison: list[Poison]) -> None:
        """Put every poison record in the dead-letter topic; return only once Kafka has them
        all (never commit past a letter that is not stored)."""
        pending = list(poison)
        backoff = 0.1
        while pending:
            failed: list[Poison] = []
            for item in pending:
                message = item.message
                log.warning(
                    "record sent to the dead-letter topic",
                    topic=message.topic(),
                    partition=message.partition(),
                    offset=message.offset(),
                    reason=item.reason,
                )

                def report(
                    err: KafkaError | None,
                    _msg: Message,
                    item: Poison = item,
                    failed: list[Poison] = failed,
                ) -> None:
                    if err is not None:
                        failed.append(item)

                self.dead_letters.produce(
                    self.settings.kafka.dead_letter_topic,
                    key=message.key(),
                    value=message.value(),
                    headers=[
                        ("reason", item.reason.encode()),
                        ("source_topic", (message.topic() or "").encode()),
                        ("source_partition", str(message.partition()).encode()),
                        ("source_offset", str(message.offset()).encode()),
                    ],
                    on_delivery=report,
                )
            while self.dead_letters.flush(5) > 0:
                backoff = self._wait(backoff)
            pending = failed
            if pending:
                backoff = self._wait(backoff)
        DEAD_LETTERS.inc(len(poison))

    def _commit(self, batch: list[Message]) -> None:
        offsets: dict[tuple[str, int], int] = {}
        for message in batch:
            key = (message.topic() or "", message.partition() or 0)
            offsets[key] = max(offsets.get(key, -1), message.offset() or 0)
        try:
            self.consumer.commit(
                offsets=[TopicPartition(t, p, o + 1) for (t, p), o in offsets.items()],
                asynchronous=False,
            )
        except KafkaException as exc:
            # Partitions moved to another indexer meanwhile: it re-indexes them (same _ids).
            log.warning("offset commit failed", error=str(exc))
            return
        for (topic, partition), offset in offsets.items():
            self.committed[(topic, partition)] = offset + 1
            LAST_OFFSET.labels(topic, str(partition)).set(offset)

    def _forget(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions revoked or lost: another indexer reports them now. Their series go, so
        that a sum over indexers counts each partition once, and a stale value does not linger
        (or fire an alert) where nobody updates it any more."""
        for tp in partitions:
            # (indexed_through stays: what was indexed stays indexed, and an eager rebalance,
            # such as a new topic matching the pattern, hands the same partitions back.)
            self.committed.pop((tp.topic, tp.partition), None)
            for gauge in (LAG, LAST_OFFSET):
                with contextlib.suppress(KeyError):  # never set in this process
                    gauge.remove(tp.topic, str(tp.partition))

    def _wait(self, backoff: float) -> float:
        """Sleep while staying in the consumer group (paused partitions still poll)."""
        assignment = self.consumer.assignment()
        self.consumer.pause(assignment)
        deadline = time.monotonic() + backoff
        while time.monotonic() < deadline and not self.stop.is_set():
            self.consumer.poll(0.1)
            # Stuck on a batch (OpenSearch down, a dead letter not stored): the lag keeps
            # growing, and the gauge must say so rather than freeze at its last value.
            if time.monotonic() >= self._next_gauges:
                self._next_gauges = time.monotonic() + self.settings.state_interval_s
                self.lags(fresh=True)
        self.consumer.resume(self.consumer.assignment())
        if self.stop.is_set():
            raise SystemExit(0)
        return min(backoff * 2, self.settings.max_backoff_s)

    def _retry(self, what: str, action: Any) -> None:
        backoff = 0.5
        while True:
            try:
                action()
                return
            except (OpenSearchConnectionError, TransportError, PublishFailed) as exc:
                log.warning(f"cannot {what} yet", error=str(exc)[:200])
                if self.stop.wait(backoff):
                    raise SystemExit(0) from exc
                backoff = min(backoff * 2, self.settings.max_backoff_s)

    # --- progress ----------------------------------------------------------------------

    def lags(self, fresh: bool = False) -> dict[str, int]:
        """Lag per assigned partition (-1 where Kafka could not tell the position), counted
        from what is indexed and committed, and set in the gauge.

        `fresh` asks the brokers for the end offsets: paused partitions fetch nothing, so the
        ends the consumer caches from its fetches stop moving while a batch is retried.
        """
        assignment = self.consumer.assignment()
        # Counted from the committed offsets, not the consumer's position: that one runs
        # ahead by the batch in hand, which is not indexed until it is committed.
        unknown = [tp for tp in assignment if (tp.topic, tp.partition) not in self.committed]
        if unknown:
            try:
                for tp in self.consumer.committed(unknown, timeout=5):
                    if tp.offset >= 0:  # ours until revoked: only our commits move it
                        self.committed[(tp.topic, tp.partition)] = tp.offset
            except KafkaException:
                return {partition_key(tp.topic, tp.partition): -1 for tp in assignment}
        lags: dict[str, int] = {}
        answering = True
        for tp in assignment:
            # Once a broker has not answered, ask no more this round (1 s each, and the
            # stuck indexer's wait would grow with its partitions).
            watermarks = self._watermarks(tp, fresh) if answering else None
            if watermarks is None:
                answering = False
                lags[partition_key(tp.topic, tp.partition)] = -1
                continue
            low, high = watermarks
            # Nothing committed yet: the group starts at the earliest offset.
            position = max(self.committed.get((tp.topic, tp.partition), low), low)
            behind = max(high - position, 0)
            LAG.labels(tp.topic, str(tp.partition)).set(behind)
            lags[partition_key(tp.topic, tp.partition)] = behind
        return lags

    def _watermarks(self, tp: TopicPartition, fresh: bool) -> tuple[int, int] | None:
        if not fresh:
            cached = self.consumer.get_watermark_offsets(tp, cached=True)
            if cached is not None and cached[1] >= 0:
                return (cached[0], cached[1])
        # Not fetched yet (the cache holds -1001), or asked to be fresh.
        try:
            answer = self.consumer.get_watermark_offsets(tp, timeout=1, cached=False)
        except KafkaException:
            return None
        return None if answer is None else (answer[0], answer[1])

    def _report(self) -> None:
        if time.monotonic() < self._next_state:
            return
        self._next_state = time.monotonic() + self.settings.state_interval_s
        report = ProgressReport(
            instance=self.instance,
            reported_at=datetime.now(UTC),
            partitions={
                key: PartitionProgress(lag, self.indexed_through.get(key))
                for key, lag in self.lags().items()
            },
        )
        try:
            self.client.index(
                index=self.settings.opensearch.state_index,
                id=self.instance,
                body=report.to_document(),
            )
        except (OpenSearchConnectionError, TransportError) as exc:
            log.info("progress not recorded (OpenSearch unavailable)", error=str(exc)[:200])


def main() -> None:
    try:
        settings = load(IndexerSettings)
        traced = load(TracingSettings)
    except ConfigError as exc:
        sys.stderr.write(f"eventstore-indexer: {exc}\n")
        raise SystemExit(2) from None
    configure_logging(settings.log_level, settings.log_format)
    if traced.enabled:
        tracing.configure("eventstore-indexer")
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    indexer = Indexer(settings)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: indexer.stop.set())
    log.info("indexer starting", kafka=settings.kafka.bootstrap, opensearch=settings.opensearch.url)
    try:
        indexer.run()
    finally:
        tracing.shutdown()  # exports the spans still buffered
    log.info("indexer stopped")


if __name__ == "__main__":
    main()
