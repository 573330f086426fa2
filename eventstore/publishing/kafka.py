"""EventPublisher on Kafka: idempotent producer, one topic per aggregate type, key = aggregate id.

The producer never blocks the event loop: produce() only enqueues, a background thread runs
poll() (where delivery reports are called) and hands each report back to the loop. Kafka being
down does not fail anything here: records wait in the producer, in order, until it is back.
If the producer's queue fills up, send() fails at once (nothing later is queued for that
aggregate) with PublisherUnavailable, and the relay publishes from Cassandra later. A process
that dies with records queued leaves its journal entries unsettled, and another server's relay
publishes what they name (usecases/publish.py).

Errors say whose fault they are: PublisherUnavailable when Kafka as a whole takes nothing now
(queue full, brokers not answering), PublishFailed when this topic or record is refused (a topic
name Kafka will not create, a record too large): the relay parks only the latter's aggregate.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import TypeVar

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

# Where they are defined: confluent_kafka.admin re-exports them without declaring it (for mypy).
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.admin._listoffsets import OffsetSpec
from confluent_kafka.admin._resource import ResourceType
from confluent_kafka.cimpl import NewTopic
from opentelemetry import trace

from eventstore import tracing
from eventstore.config import KafkaSettings
from eventstore.domain.events import RecordedEvent
from eventstore.domain.tracecontext import trace_context_of
from eventstore.domain.validation import Limits
from eventstore.ports import Delivery, EventPublisher, PublisherUnavailable, PublishFailed
from eventstore.wire.records import message_bytes, record_headers, record_timestamp, record_value

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: After failing to check or raise a topic's max.message.bytes, try again after this long.
TOPIC_SIZE_RETRY_S = 60.0
#: How long ensure_topic waits for every partition of a topic to take records.
TOPIC_READY_TIMEOUT_S = 30.0


def topic_config(max_message_bytes: int, min_insync_replicas: int | None = None) -> dict[str, str]:
    config = {
        # Events are never deleted: keep every record for ever, whatever the broker defaults say.
        "retention.ms": "-1",
        "retention.bytes": "-1",
        "cleanup.policy": "delete",
        # The largest record batch the topic takes: every event the store accepts must fit
        # (records.message_bytes), whatever the broker's default (about 1 MB).
        "max.message.bytes": str(max_message_bytes),
    }
    if min_insync_replicas is not None:
        # With acks=all, a record counts as published only once this many replicas hold it.
        config["min.insync.replicas"] = str(min_insync_replicas)
    return config


async def _answer(future: concurrent.futures.Future[T], timeout_s: float) -> T:
    """An admin request's result, or KafkaException(_TIMED_OUT) once `timeout_s` is over.

    librdkafka's admin futures are meant to end by their request timeout, yet one was seen never
    to end while the broker restarted: awaited bare, it held its topic's lock for good and every
    publication of that aggregate type with it (a full-suite run of the Kafka outage test).
    """
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
    except TimeoutError:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "no answer from Kafka")) from None


async def ensure_topic(admin: AdminClient, name: str, settings: KafkaSettings) -> None:
    """Create the topic with our settings unless it exists (idempotent, any replica)."""
    futures = admin.create_topics(
        [
            NewTopic(
                name,
                settings.partitions,
                settings.replication_factor,
                config=topic_config(settings.max_message_bytes, settings.min_insync_replicas),
            )
        ],
        request_timeout=10,
    )
    try:
        await _answer(futures[name], 15)
    except KafkaException as exc:
        error = exc.args[0]
        if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise _refusal(f"cannot create topic {name}", error) from exc
    await _wait_until_writable(admin, name)


#: Errors that say nothing about the topic or record: Kafka is not answering (yet).
_UNREACHABLE = {
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._RESOLVE,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NETWORK_EXCEPTION,
    KafkaError._QUEUE_FULL,
}


def _refusal(what: str, error: KafkaError) -> PublishFailed:
    """PublisherUnavailable if Kafka was not reachable, else PublishFailed (this one refused)."""
    if error.code() in _UNREACHABLE or error.retriable():
        return PublisherUnavailable(f"{what}: {error}")
    return PublishFailed(f"{what}: {error}")


async def _wait_until_writable(admin: AdminClient, name: str) -> None:
    """Return once every partition of the topic has a leader that holds the partition's log.

    Leaders in the metadata are not enough. A broker lists a new topic's leaders before it has
    made the partitions' logs (it publishes its metadata image, then its replica manager
    creates the logs; many partitions at once take a while), and refuses a record sent in
    between as NOT_LEADER_OR_FOLLOWER. The idempotent producer can then lose records with no
    error: if a later batch of the partition is already on its way and lands once the log
    exists, the broker takes it although its first sequence is not 0 (it has no state for
    our producer there: KAFKA-15591), and librdkafka reports the refused records, still
    waiting to be retried, as delivered ("implicitly acked by subsequent batch success",
    rd_kafka_dr_implicit_ack). A broker answers ListOffsets for a partition only from the
    leader's own log, so once every partition answers, records sent from then on find it.
    (_settle still refuses a delivery reported without an offset: a leader can change later.)
    """
    deadline = time.monotonic() + TOPIC_READY_TIMEOUT_S
    unreachable: KafkaError | None = None
    while True:
        try:
            missing = await _partitions_without_log(admin, name)
            unreachable = None
        except KafkaException as exc:
            unreachable = exc.args[0]
            missing = str(unreachable)
        if not missing:
            return
        if time.monotonic() >= deadline:
            if unreachable is not None:
                raise _refusal(f"topic {name} does not take records yet", unreachable)
            raise PublishFailed(f"topic {name} does not take records yet: {missing}")
        await asyncio.sleep(0.05)


async def _partitions_without_log(admin: AdminClient, name: str) -> str:
    """What keeps the topic from taking records ("" when nothing does)."""
    metadata = await asyncio.to_thread(admin.list_topics, name, 5)
    topic = metadata.topics.get(name)
    if topic is None or topic.error is not None or not topic.partitions:
        return f"not in the metadata yet ({topic.error if topic is not None else 'absent'})"
    earliest: OffsetSpec = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
    request = {TopicPartition(name, p): earliest for p in topic.partitions}
    futures = admin.list_offsets(request, request_timeout=5)
    missing: list[str] = []
    for partition, future in futures.items():
        try:
            await _answer(future, 10)
        except KafkaException as exc:
            missing.append(f"[{partition.partition}] {exc.args[0]}")
    return ", ".join(missing)


class _Delivery(Delivery):
    def __init__(self, futures: list[asyncio.Future[tuple[int, int]]]) -> None:
        #: One per record, in send order, each done with where the record is in the log.
        self.futures = futures

    async def wait(self) -> None:
        results = await asyncio.gather(*self.futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise PublishFailed(str(result)) from result

    def positions(self) -> list[tuple[int, int]]:
        """(partition, offset) of each record, in send order, once wait() has returned."""
        return [future.result() for future in self.futures]


async def _max_message_bytes(admin: AdminClient, resource: ConfigResource) -> int:
    futures = admin.describe_configs([resource], request_timeout=10)
    entries = await _answer(futures[resource], 15)
    return int(entries["max.message.bytes"].value)


async def ensure_max_message_bytes(
    admin: AdminClient, name: str, required: int, timeout_s: float = 15.0
) -> None:
    """Raise the topic's max.message.bytes to `required` if it is lower: topics created before
    we set it, by hand, or by a replica with smaller limits. Idempotent, for any replica: none
    ever lowers it, and each checks again after raising, so replicas that race with different
    requirements settle on the largest. Returns once the brokers report the new value (an
    alteration takes a moment to show)."""
    resource = ConfigResource(ResourceType.TOPIC, name)
    change = ConfigResource(
        ResourceType.TOPIC,
        name,
        incremental_configs=[
            ConfigEntry(
                "max.message.bytes", str(required), incremental_operation=AlterConfigOpType.SET
            )
        ],
    )
    deadline = time.monotonic() + timeout_s
    altered_at: float | None = None
    problem = "no answer"
    while time.monotonic() < deadline:
        try:
            found = await _max_message_bytes(admin, resource)
            if found >= required:
                return
            problem = f"it is {found}"
            now = time.monotonic()
            # Again after a while: a replica needing less may have raised it at the same time.
            if altered_at is None or now - altered_at > 3.0:
                futures = admin.incremental_alter_configs([change], request_timeout=10)
                await _answer(futures[change], 15)
                altered_at = now
                log.info("raising max.message.bytes of a topic", topic=name, was=found, to=required)
        except KafkaException as exc:
            error = exc.args[0]
            # A topic just created is unknown to some brokers for a moment.
            if not error.retriable() and error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise PublishFailed(
                    f"cannot check or raise max.message.bytes of topic {name}: {error}"
                ) from exc
            problem = str(error)
        except (KeyError, ValueError) as exc:
            raise PublishFailed(f"no max.message.bytes for topic {name}: {exc!r}") from exc
        await asyncio.sleep(0.1)
    raise PublishFailed(
        f"max.message.bytes of topic {name} is not yet at least {required} ({problem})"
    )


def producer_config(
    settings: KafkaSettings, message_max_bytes: int
) -> dict[str, str | int | float | bool]:
    """The producer of our event records, wherever it runs (server, replayer): idempotent,
    acknowledged by every in-sync replica, partitioned like Kafka's Java clients."""
    return {
        **settings.client_config(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": settings.linger_ms,
        "compression.type": "lz4",
        # The same partition for a key as Kafka's Java clients, so that consumers in any
        # language agree with us (and Subscribe can read one aggregate's partition).
        "partitioner": "murmur2_random",
        # produce() refuses a record above this (key + value + headers + framing), so it must
        # hold the largest record to send. A batch of several records stays within
        # min(this, batch.size = 1,000,000 by default), a batch of one large record within
        # records.max_batch_bytes: the topics take both.
        "message.max.bytes": message_max_bytes,
    }


class KafkaEventPublisher(EventPublisher):
    def __init__(self, settings: KafkaSettings, limits: Limits) -> None:
        self._settings = settings
        #: The topics' max.message.bytes and the producer's message.max.bytes: the largest record
        #: an accepted event becomes, with a margin (at most settings.max_message_bytes, which
        #: start-up checks).
        self._message_bytes = message_bytes(limits, settings.max_message_bytes)
        # Event topics are created with what the limits need rather than the ceiling.
        self._topic_settings = settings.model_copy(
            update={"max_message_bytes": self._message_bytes}
        )
        self._producer = Producer(
            {
                **producer_config(settings, self._message_bytes),
                # Never give up on a queued record: a timed-out record followed by a delivered
                # one would leave a gap in an aggregate's order. During an outage records wait
                # here; if the queue fills, produce() refuses at once and the relay takes over.
                "message.timeout.ms": 0,
            }
        )
        self._admin = AdminClient(settings.client_config())
        self._topics: set[str] = set()
        #: Topics whose max.message.bytes was found (or made) large enough.
        self._sized: set[str] = set()
        self._size_retry_at: dict[str, float] = {}
        #: One lock per topic: a topic that is slow to become ready holds back only its own.
        self._topic_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._running = True
        self._poller = threading.Thread(target=self._poll, name="kafka-producer-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while self._running:
            self._producer.poll(0.1)

    async def _topic(self, aggregate_type: str) -> str:
        name = self._settings.topic(aggregate_type)
        if name not in self._topics:
            async with self._topic_locks[name]:
                if name not in self._topics:
                    await ensure_topic(self._admin, name, self._topic_settings)
                    self._topics.add(name)
        if name not in self._sized and time.monotonic() >= self._size_retry_at.get(name, 0.0):
            async with self._topic_locks[name]:
                if name not in self._sized:
                    await self._fit(name)
        return name

    async def _fit(self, name: str) -> None:
        try:
            await ensure_max_message_bytes(self._admin, name, self._message_bytes)
        except PublishFailed as exc:
            # Not fatal to publishing: smaller records still fit, and a record the broker
            # refuses fails on its own (the relay retries its aggregate). Said loudly, retried.
            self._size_retry_at[name] = time.monotonic() + TOPIC_SIZE_RETRY_S
            log.error(
                "the topic may refuse the largest events; grant AlterConfigs on it or raise "
                "its max.message.bytes",
                topic=name,
                needed=self._message_bytes,
                error=str(exc),
            )
        else:
            self._sized.add(name)

    async def send(self, events: Sequence[RecordedEvent]) -> Delivery:
        if not events:
            return _Delivery([])
        span = _send_span(self._settings.topic(events[0].aggregate_type), events)
        try:
            delivery = await self._send(events)
        except BaseException as exc:
            tracing.set_error(span, str(exc))
            span.end()
            raise
        if span.is_recording():
            _end_when_settled(span, delivery)
        return delivery

    async def _send(self, events: Sequence[RecordedEvent]) -> _Delivery:
        topic = await self._topic(events[0].aggregate_type)
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[tuple[int, int]]] = []
        for event in events:
            future: asyncio.Future[tuple[int, int]] = loop.create_future()

            def report(
                err: KafkaError | None,
                msg: Message,
                future: asyncio.Future[tuple[int, int]] = future,
            ) -> None:
                # Only plain values cross to the loop: the message is librdkafka's, for now.
                loop.call_soon_threadsafe(
                    _settle, future, err, msg.topic(), msg.partition(), msg.offset()
                )

            try:
                self._producer.produce(
                    topic,
                    key=event.aggregate_id.encode(),
                    value=record_value(event),
                    headers=record_headers(event),
                    timestamp=record_timestamp(event),
                    on_delivery=report,
                )
            except (BufferError, KafkaException) as exc:
                # Fail this and every later record of the batch, so that order is kept; the
                # relay takes over. A full local queue (Kafka unreachable for a long time) is
                # nobody's fault in particular; anything else is this record's.
                for pending in futures:
                    pending.cancel()
                if isinstance(exc, BufferError):
                    raise PublisherUnavailable(f"producer queue full: {exc}") from exc
                raise _refusal("producer refused a record", exc.args[0]) from exc
            futures.append(future)
        return _Delivery(futures)

    def queued(self) -> int:
        """Records waiting in the producer (a backlog gauge)."""
        return len(self._producer)

    async def close(self) -> None:
        remaining = await asyncio.to_thread(self._producer.flush, self._settings.shutdown_flush_s)
        self._running = False
        await asyncio.to_thread(self._poller.join, 1)
        if remaining:
            log.warning(
                "records left unconfirmed at shutdown; the relay will publish them", count=remaining
            )


def _send_span(topic: str, events: Sequence[RecordedEvent]) -> tracing.Span:
    """The span of one hand-over to the producer, ended once Kafka confirmed every record.
    A child of the append's call when the request path sends; the relay and republish send
    outside any call, so their span links to the appends' stored contexts instead."""
    if not tracing.enabled():
        return tracing.INVALID_SPAN
    links = None
    if not trace.get_current_span().get_span_context().is_valid:
        contexts = dict.fromkeys(
            c for e in events if (c := trace_context_of(e.metadata)) is not None
        )
        links = [tracing.link(c) for c in contexts]
    return tracing.start_span(
        f"send {topic}",
        tracing.SpanKind.PRODUCER,
        {
            "messaging.system": "kafka",
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": topic,
            "messaging.batch.message_count": len(events),
        },
        links=links,
    )


def _end_when_settled(span: tracing.Span, delivery: _Delivery) -> None:
    """End `span` once every record is confirmed or failed (in the delivery callbacks, on the
    loop), with the first record's place in the log, or as an error if any failed."""
    futures = delivery.futures
    left = len(futures)
    failed = False

    def settled(future: asyncio.Future[tuple[int, int]]) -> None:
        nonlocal left, failed
        left -= 1
        if future.cancelled():
            failed = True
            tracing.set_error(span, "not handed over")
        elif (error := future.exception()) is not None:
            failed = True
            tracing.set_error(span, str(error))
        if left == 0:
            if not failed:
                partition, offset = futures[0].result()
                span.set_attribute("messaging.destination.partition.id", str(partition))
                span.set_attribute("messaging.kafka.offset", offset)
            span.end()

    for future in futures:
        future.add_done_callback(settled)


def _settle(
    future: asyncio.Future[tuple[int, int]],
    err: KafkaError | None,
    topic: str | None,
    partition: int | None,
    offset: int | None,
) -> None:
    """Confirm a record only with its place in the log; anything else fails its delivery."""
    if future.done():
        return
    if err is not None:
        future.set_exception(PublishFailed(str(err)))
    elif partition is None or partition < 0 or offset is None or offset < 0:
        # No error and no offset: librdkafka inferred the delivery instead of being told where
        # the record is. It does so when a later batch of the partition succeeds while this
        # record's batch waits to be retried after an error (rd_kafka_dr_implicit_ack; the
        # offset stays OFFSET_INVALID), and the inference is wrong when the broker took the
        # later batch without the earlier one (see _wait_until_writable). Not confirmed, so the
        # caller publishes it again from its cursor; consumers drop a duplicate by
        # (aggregate_id, version).
        log.warning(
            "delivery reported without a log offset; not counted as delivered",
            topic=topic,
            partition=partition,
            offset=offset,
        )
        future.set_exception(
            PublishFailed(
                f"delivery to {topic} [{partition}] reported without a log offset ({offset})"
            )
        )
    else:
        future.set_result((partition, offset))
