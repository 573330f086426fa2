"""Consumer groups on Kafka: each member a Kafka consumer of the group (cooperative-sticky
assignment), its positions Kafka's committed offsets, with the offsets done above each commit
point in the commit's metadata (eventstore.domain.groups).

Per group, two topics of one partition each beside the event topics (`group_topic_prefix`, not
under `topic_prefix`, so neither the indexer nor subscriptions read them): `<group>.parked`
holds the events the members gave up on, with why; `<group>.retry` the parked events replayed,
which every member of the group reads as well. How far the parked topic was replayed or skipped
is the committed offset of the consumer group `<group>.parked`.

A member is polled on the event loop with a zero timeout (as subscriptions are), so the
rebalance callbacks run there too and touch the member's state without locks; the few blocking
calls they make (the committed positions, a synchronous commit before partitions move) are
answered by the group coordinator in milliseconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import structlog
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from google.protobuf.message import DecodeError

from eventstore.config import KafkaSettings
from eventstore.domain.errors import StorageUnavailable
from eventstore.domain.groups import Commit, GroupRecord, ParkedEvent, Where
from eventstore.ports import GroupConsumer, GroupListener, GroupLog, LogStart
from eventstore.publishing.kafka import ensure_topic, producer_config
from eventstore.wire.records import decode_event, record_timestamp, record_value

log = structlog.get_logger(__name__)

IDLE_SLEEP_S = 0.02
#: Kafka waits this long for a member's heartbeat before handing its partitions to others.
SESSION_TIMEOUT_MS = 10_000


def group_topic(settings: KafkaSettings, group_id: str, kind: str) -> str:
    """A topic of the group: its readable id where topic names allow, and a hash, so two ids
    that read alike never share one."""
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", group_id)[:120]
    digest = hashlib.sha256(group_id.encode()).hexdigest()[:12]
    return f"{settings.group_topic_prefix}{readable}-{digest}.{kind}"


def _unavailable(what: str, exc: KafkaException) -> StorageUnavailable:
    return StorageUnavailable(f"Kafka: {what}: {exc.args[0]}")


class KafkaGroupConsumer(GroupConsumer):
    def __init__(
        self,
        settings: KafkaSettings,
        group_id: str,
        aggregate_types: frozenset[str],
        start: LogStart,
        listener: GroupListener,
    ) -> None:
        self._settings = settings
        self._start = start
        self._listener = listener
        self._retry_topic = group_topic(settings, group_id, "retry")
        prefix = re.escape(settings.topic_prefix)
        if aggregate_types:
            names = "|".join(re.escape(t) for t in sorted(aggregate_types))
            pattern = f"^{prefix}({names})$"
        else:
            pattern = f"^{prefix}.*"
        self._topics = [pattern, self._retry_topic]
        self._consumer = Consumer(
            {
                **settings.client_config(),
                "group.id": group_id,
                "partition.assignment.strategy": "cooperative-sticky",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": SESSION_TIMEOUT_MS,
                "topic.metadata.refresh.interval.ms": 5000,
                "queued.max.messages.kbytes": 1024,
                **settings.consumer_size_config(fetch_max_bytes=1024 * 1024),
                "fetch.wait.max.ms": 50,
            }
        )
        self._error: Exception | None = None

    def _where(self, tp: TopicPartition) -> Where:
        return (tp.topic, tp.partition)

    async def open(self) -> None:
        admin = AdminClient(self._settings.client_config())
        one = self._settings.model_copy(update={"partitions": 1})
        await ensure_topic(admin, self._retry_topic, one)
        self._consumer.subscribe(
            self._topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    # --- rebalance callbacks (inside consume(), on the event loop) ---------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if not partitions:
            return
        try:
            committed = consumer.committed(partitions, timeout=10)
            starts: list[TopicPartition] = []
            fresh: list[TopicPartition] = []
            for tp in committed:
                if tp.offset >= 0:
                    commit = Commit(tp.offset, Commit.done_from(tp.offset, tp.metadata))
                else:
                    commit = Commit(self._first_offset(tp))
                    fresh.append(TopicPartition(tp.topic, tp.partition, commit.offset))
                self._listener.assigned(self._where(tp), commit)
                starts.append(TopicPartition(tp.topic, tp.partition, commit.offset))
            consumer.incremental_assign(starts)
            if fresh:
                # Where a new group starts is settled now, so that the next owner of these
                # partitions (after a rebalance) starts at the same place, not at a later end.
                consumer.commit(offsets=fresh, asynchronous=True)
        except Exception as exc:  # noqa: BLE001 - raised from read(), not lost in librdkafka
            self._error = exc

    def _first_offset(self, tp: TopicPartition) -> int:
        low, high = self._consumer.get_watermark_offsets(tp, timeout=10)
        if tp.topic == self._retry_topic or self._start == "beginning":
            return int(low)
        if isinstance(self._start, datetime):
            millis = int(self._start.timestamp() * 1000)
            (found,) = self._consumer.offsets_for_times(
                [TopicPartition(tp.topic, tp.partition, millis)], timeout=10
            )
            return int(found.offset) if found.offset >= 0 else int(high)
        return int(high)  # "end"

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            final = []
            for tp in partitions:
                commit = self._listener.revoked(self._where(tp))
                if commit is not None:
                    final.append(_committed(tp.topic, tp.partition, commit))
            if final:
                consumer.commit(offsets=final, asynchronous=False)
            consumer.incremental_unassign(partitions)
        except Exception as exc:  # noqa: BLE001 - see _on_assign
            self._error = exc

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._listener.lost(self._where(tp))
        consumer.incremental_unassign(partitions)

    # --- the member's side -------------------------------------------------------------------

    async def read(self, max_records: int) -> list[GroupRecord]:
        try:
            messages = self._consumer.consume(max_records, timeout=0)
        except KafkaException as exc:
            raise _unavailable("reading the group's topics", exc) from exc
        if self._error is not None:
            error, self._error = self._error, None
            if isinstance(error, KafkaException):
                raise _unavailable("a rebalance", error) from error
            raise error
        records = []
        for message in messages:
            if (record := self._record(message)) is not None:
                records.append(record)
        if not messages:
            await asyncio.sleep(IDLE_SLEEP_S)
        return records

    def _record(self, message: Message) -> GroupRecord | None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("group consumer error", error=str(error))
            return None
        try:
            event = decode_event(message.value() or b"")
        except (DecodeError, ValueError) as exc:
            # Nothing we publish fails to decode; a stranger's record in our topic is skipped.
            log.error(
                "record of a group's topic is not an event; skipped",
                topic=message.topic(),
                partition=message.partition(),
                offset=message.offset(),
                error=str(exc),
            )
            return None
        return GroupRecord(
            event, message.topic() or "", message.partition() or 0, message.offset() or 0
        )

    def commit(self, commits: Mapping[Where, Commit]) -> None:
        if not commits:
            return
        offsets = [_committed(t, p, c) for (t, p), c in commits.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            # Not fatal: the next commit carries the same positions or later ones.
            log.warning("group commit failed; retried with the next", error=str(exc.args[0]))

    def pause(self, wheres: Sequence[Where]) -> None:
        if wheres:
            self._consumer.pause([TopicPartition(t, p) for t, p in wheres])

    def resume(self, wheres: Sequence[Where]) -> None:
        if wheres:
            self._consumer.resume([TopicPartition(t, p) for t, p in wheres])

    async def close(self, final: Mapping[Where, Commit]) -> None:
        def leave() -> None:
            try:
                if final:
                    self._consumer.commit(
                        offsets=[_committed(t, p, c) for (t, p), c in final.items()],
                        asynchronous=False,
                    )
            except KafkaException as exc:
                # A rebalance under way (the group moved on): leaving commits again, in the
                # revoke callback, with what is done by then.
                log.info("final group commit refused", error=str(exc.args[0]))
            finally:
                self._consumer.close()

        # close() leaves the group (a rebalance hands our partitions on): it may take a while.
        await asyncio.to_thread(leave)


def _committed(topic: str, partition: int, commit: Commit) -> TopicPartition:
    return TopicPartition(topic, partition, commit.offset, metadata=commit.metadata())


def _headers(message: Message) -> dict[str, str]:
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return {
        str(k): v.decode(errors="replace") if isinstance(v, bytes) else str(v or "")
        for k, v in pairs
    }


Headers = list[tuple[str, str | bytes | None]]


class KafkaGroupLog(GroupLog):
    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._producer: Producer | None = None

    async def join(
        self,
        group_id: str,
        aggregate_types: frozenset[str],
        start: LogStart,
        listener: GroupListener,
    ) -> GroupConsumer:
        consumer = KafkaGroupConsumer(self._settings, group_id, aggregate_types, start, listener)
        try:
            await consumer.open()
        except KafkaException as exc:
            await consumer.close({})
            raise _unavailable("joining a group", exc) from exc
        except Exception:
            await consumer.close({})
            raise
        return consumer

    def _producer_of(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(
                producer_config(self._settings, self._settings.max_message_bytes)
            )
        return self._producer

    async def _ensure(self, topic: str) -> None:
        admin = AdminClient(self._settings.client_config())
        await ensure_topic(admin, topic, self._settings.model_copy(update={"partitions": 1}))

    async def _produce(
        self, topic: str, key: str, value: bytes, headers: Headers, timestamp: int
    ) -> None:
        """Send one record and return once Kafka holds it."""
        producer = self._producer_of()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def report(err: KafkaError | None, _msg: Message) -> None:
            def settle() -> None:
                if done.done():
                    return
                if err is not None:
                    done.set_exception(StorageUnavailable(f"Kafka: {err}"))
                else:
                    done.set_result(None)

            loop.call_soon_threadsafe(settle)

        producer.produce(
            topic,
            key=key.encode(),
            value=value,
            headers=headers,
            timestamp=timestamp,
            on_delivery=report,
        )
        deadline = time.monotonic() + 30
        while not done.done():
            await asyncio.to_thread(producer.poll, 0.1)
            if time.monotonic() > deadline:
                raise StorageUnavailable("Kafka: writing to a group's topic timed out")
        await done

    async def park(self, group_id: str, record: GroupRecord, reason: str, attempts: int) -> None:
        topic = group_topic(self._settings, group_id, "parked")
        await self._ensure(topic)
        event = record.event
        headers: Headers = [
            ("reason", reason[:1000].encode()),
            ("attempts", str(attempts).encode()),
            ("parked_at", datetime.now(UTC).isoformat().encode()),
            ("from", f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ]
        await self._produce(
            topic, event.aggregate_id, record_value(event), headers, record_timestamp(event)
        )

    def _parked_reader(self, group_id: str) -> Consumer:
        return Consumer(
            {
                **self._settings.client_config(),
                "group.id": f"{group_id}.parked",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                **self._settings.consumer_size_config(fetch_max_bytes=1024 * 1024),
            }
        )

    def _read_parked(
        self, group_id: str, max_count: int
    ) -> tuple[list[tuple[ParkedEvent, bytes]], int]:
        """The parked records from the replay position on, with their values (blocking), and
        that position."""
        topic = group_topic(self._settings, group_id, "parked")
        consumer = self._parked_reader(group_id)
        try:
            found: list[tuple[ParkedEvent, bytes]] = []
            metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if metadata is None or metadata.error is not None:
                return found, 0  # nothing was ever parked
            tp = TopicPartition(topic, 0)
            (committed,) = consumer.committed([tp], timeout=10)
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            position = max(int(committed.offset), int(low))
            if position >= high:
                return found, position
            consumer.assign([TopicPartition(topic, 0, position)])
            deadline = time.monotonic() + 10
            next_offset = position
            while next_offset < high and len(found) < max_count and time.monotonic() < deadline:
                for message in consumer.consume(min(500, max_count - len(found)), timeout=0.5):
                    if message.error() is not None:
                        continue
                    offset = message.offset() or 0
                    next_offset = offset + 1
                    headers = _headers(message)
                    value = message.value() or b""
                    parked_at = headers.get("parked_at")
                    found.append(
                        (
                            ParkedEvent(
                                event=decode_event(value),
                                position=offset,
                                reason=headers.get("reason", ""),
                                attempts=int(headers.get("attempts") or 0),
                                parked_at=datetime.fromisoformat(parked_at)
                                if parked_at
                                else datetime.fromtimestamp(0, UTC),
                            ),
                            value,
                        )
                    )
            return found, position
        finally:
            consumer.close()

    async def parked(self, group_id: str, max_count: int) -> list[ParkedEvent]:
        try:
            found, _ = await asyncio.to_thread(self._read_parked, group_id, max_count)
        except KafkaException as exc:
            raise _unavailable("listing parked events", exc) from exc
        return [parked for parked, _ in found]

    async def replay_parked(self, group_id: str, skip: bool = False) -> int:
        topic = group_topic(self._settings, group_id, "parked")
        retry = group_topic(self._settings, group_id, "retry")
        try:
            found, position = await asyncio.to_thread(self._read_parked, group_id, 1_000_000)
            if not skip:
                await self._ensure(retry)
                for parked, value in found:
                    await self._produce(
                        retry,
                        parked.event.aggregate_id,
                        value,
                        [("replayed_from", str(parked.position).encode())],
                        record_timestamp(parked.event),
                    )
            end = found[-1][0].position + 1 if found else position
            if end > position:
                await asyncio.to_thread(self._commit_parked, group_id, topic, end)
        except KafkaException as exc:
            raise _unavailable("replaying parked events", exc) from exc
        return len(found)

    def _commit_parked(self, group_id: str, topic: str, offset: int) -> None:
        consumer = self._parked_reader(group_id)
        try:
            consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
        finally:
            consumer.close()

    async def close(self) -> None:
        if self._producer is not None:
            await asyncio.to_thread(self._producer.flush, 10)
