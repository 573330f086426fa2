"""EventLog on Kafka: a reader of the topics with a consumer of its own.

A subscription catches up with one (a slow one simply reads later: its consumer fetches at
most ~1 MB ahead, and never holds back appends or other subscribers); live subscriptions
share one (publishing/shared_tail.py). Offsets are ours (no consumer-group commits): the
checkpoint is the position. Reads never block the event loop: consume() is called with a zero
timeout and the reader sleeps briefly when nothing has arrived.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Mapping
from datetime import datetime

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from google.protobuf.message import DecodeError

from eventstore.config import KafkaSettings
from eventstore.domain.errors import StorageUnavailable
from eventstore.ports import EventLog, LogReader, LogRecord, LogStart
from eventstore.wire.records import decode_event, murmur2_partition

log = structlog.get_logger(__name__)

IDLE_SLEEP_S = 0.02
TOPIC_REFRESH_S = 5.0


class KafkaLogReader(LogReader):
    def __init__(
        self,
        settings: KafkaSettings,
        aggregate_types: frozenset[str],
        start: LogStart,
        key: str | None,
    ) -> None:
        self._settings = settings
        self._types = aggregate_types
        self._start = start
        self._key = key
        self._consumer = Consumer(
            {
                **settings.client_config(),
                "group.id": f"eventstore-subscription-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "queued.max.messages.kbytes": 1024,
                # Read ahead about 1 MB, yet take a record of any size the store accepts (the
                # broker returns a larger first batch whole).
                **settings.consumer_size_config(fetch_max_bytes=1024 * 1024),
                "fetch.wait.max.ms": 50,
                "log_level": 3,
            }
        )
        self._assigned: dict[tuple[str, int], int] = {}
        self._end_at_open: dict[tuple[str, int], int] = {}
        self._next_refresh = 0.0

    def _type_of(self, topic: str) -> str:
        return topic[len(self._settings.topic_prefix) :]

    def _wanted_topics(self) -> dict[str, int]:
        """Existing topics we should read, with their partition counts (blocking)."""
        topics = self._consumer.list_topics(timeout=10).topics
        found = {}
        for name, meta in topics.items():
            if not name.startswith(self._settings.topic_prefix) or meta.error is not None:
                continue
            if self._types and self._type_of(name) not in self._types:
                continue
            found[name] = len(meta.partitions)
        return found

    def _assign_new(self, initial: bool) -> None:
        """Assign partitions we do not read yet (blocking; run in a thread)."""
        found: dict[tuple[str, int], tuple[TopicPartition, int]] = {}
        for topic, count in self._wanted_topics().items():
            partitions = range(count)
            if self._key is not None:
                partitions = range(p := murmur2_partition(self._key.encode(), count), p + 1)
            for partition in partitions:
                where = (self._type_of(topic), partition)
                if where not in self._assigned:
                    tp = TopicPartition(topic, partition)
                    found[where] = tp, self._watermarks(tp)[1]
        at_time = (
            self._offsets_at(self._start, found)
            if initial and isinstance(self._start, datetime)
            else {}
        )
        new: list[TopicPartition] = []
        for where, (tp, high) in found.items():
            if initial:
                self._end_at_open[where] = high
            if self._start == "end" and initial:
                offset = high
            elif isinstance(self._start, Mapping):
                offset = self._start.get(where, 0)
            else:
                # beginning, or a topic created after we opened (from a time too: what it
                # holds was published after the reader opened)
                offset = at_time.get(where, 0)
            self._assigned[where] = offset
            new.append(TopicPartition(tp.topic, tp.partition, offset or OFFSET_BEGINNING))
        if new:
            self._consumer.incremental_assign(new)
        self._next_refresh = time.monotonic() + TOPIC_REFRESH_S

    def _offsets_at(
        self, at: datetime, found: Mapping[tuple[str, int], tuple[TopicPartition, int]]
    ) -> dict[tuple[str, int], int]:
        """Per partition, the first offset whose record timestamp (the event's recorded_at,
        set by the publisher) is at or after `at`; its end when there is none."""
        if not found:
            return {}
        millis = math.floor(at.timestamp() * 1000)
        wanted = [TopicPartition(tp.topic, tp.partition, millis) for tp, _ in found.values()]
        answered = {
            (tp.topic, tp.partition): tp
            for tp in self._consumer.offsets_for_times(wanted, timeout=10)
        }
        offsets = {}
        for where, (tp, high) in found.items():
            got = answered.get((tp.topic, tp.partition))
            if got is None or got.error is not None:
                error = got.error if got is not None else "no answer"
                raise StorageUnavailable(f"Kafka: offsets for a time: {error}")
            offsets[where] = got.offset if got.offset >= 0 else high
        return offsets

    def _watermarks(self, tp: TopicPartition) -> tuple[int, int]:
        # Right after a topic is created or a broker restarts, leadership may still be moving.
        for attempt in range(40):
            try:
                low, high = self._consumer.get_watermark_offsets(tp, timeout=10)
                return int(low), int(high)
            except KafkaException as exc:
                if attempt == 39 or (
                    not exc.args[0].retriable()
                    and exc.args[0].code()
                    not in (
                        KafkaError.NOT_LEADER_FOR_PARTITION,
                        KafkaError.LEADER_NOT_AVAILABLE,
                        KafkaError.UNKNOWN_TOPIC_OR_PART,
                    )
                ):
                    raise StorageUnavailable(f"Kafka: {exc.args[0]}") from exc
                time.sleep(0.25)
        raise AssertionError("unreachable")

    async def open(self) -> None:
        try:
            await asyncio.to_thread(self._assign_new, True)
        except KafkaException as exc:
            raise StorageUnavailable(f"Kafka: {exc.args[0]}") from exc

    def start_positions(self) -> dict[tuple[str, int], int]:
        return dict(self._assigned)

    def lag(self, positions: Mapping[tuple[str, int], int]) -> int:
        behind = 0
        for (aggregate_type, partition), start in self._assigned.items():
            tp = TopicPartition(self._settings.topic(aggregate_type), partition)
            try:
                watermarks = self._consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if watermarks:
                behind += max(
                    int(watermarks[1]) - positions.get((aggregate_type, partition), start), 0
                )
        return behind

    def caught_up(self, positions: Mapping[tuple[str, int], int]) -> bool:
        return all(positions.get(where, 0) >= end for where, end in self._end_at_open.items())

    async def read(self, max_records: int) -> list[LogRecord]:
        # Topics appear as new aggregate types get their first events: look again now and then.
        if time.monotonic() >= self._next_refresh:
            try:
                await asyncio.to_thread(self._assign_new, False)
            except (KafkaException, StorageUnavailable) as exc:
                log.warning("topic refresh failed; trying again later", error=str(exc))
                self._next_refresh = time.monotonic() + TOPIC_REFRESH_S
        messages = self._consumer.consume(num_messages=max_records, timeout=0)
        if not messages:
            await asyncio.sleep(IDLE_SLEEP_S)
            return []
        records = []
        for message in messages:
            if message.error():
                log.warning("kafka read error", error=str(message.error()))
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if topic is None or partition is None or offset is None:
                continue
            try:
                event = decode_event(bytes(message.value() or b""))
            except (DecodeError, ValueError):
                log.warning(
                    "undecodable record skipped", topic=topic, partition=partition, offset=offset
                )
                event = None
            if event is not None:
                records.append(LogRecord(event, self._type_of(topic), partition, offset))
        return records

    async def close(self) -> None:
        await asyncio.to_thread(self._consumer.close)


class KafkaEventLog(EventLog):
    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings

    async def open(
        self,
        aggregate_types: frozenset[str],
        start: LogStart,
        key: str | None = None,
    ) -> LogReader:
        reader = KafkaLogReader(self._settings, aggregate_types, start, key)
        try:
            await reader.open()
        except Exception:
            await reader.close()
            raise
        return reader
