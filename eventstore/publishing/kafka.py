"""EventPublisher on Kafka: idempotent producer, one topic per aggregate type, key = aggregate id.

The producer never blocks the event loop: produce() only enqueues, a background thread runs
poll() (where delivery reports are called) and hands each report back to the loop. Kafka being
down does not fail anything here: records wait in the producer, in order, until it is back.
If the producer's queue fills up, send() fails at once (nothing later is queued for that
aggregate) and the relay publishes from the outbox later. A process that dies with records
queued leaves its outbox markers behind, and the relay of any server publishes them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

# Where they are defined: confluent_kafka.admin re-exports them without declaring it (for mypy).
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.admin._resource import ResourceType
from confluent_kafka.cimpl import NewTopic

from eventstore.config import KafkaSettings
from eventstore.domain.events import RecordedEvent
from eventstore.domain.validation import Limits
from eventstore.ports import Delivery, EventPublisher, PublishFailed
from eventstore.publishing.records import message_bytes, record_headers, record_value

log = structlog.get_logger(__name__)

#: After failing to check or raise a topic's max.message.bytes, try again after this long.
TOPIC_SIZE_RETRY_S = 60.0


def topic_config(max_message_bytes: int) -> dict[str, str]:
    return {
        # Events are never deleted: keep every record for ever, whatever the broker defaults say.
        "retention.ms": "-1",
        "retention.bytes": "-1",
        "cleanup.policy": "delete",
        # The largest record batch the topic takes: every event the store accepts must fit
        # (records.message_bytes), whatever the broker's default (about 1 MB).
        "max.message.bytes": str(max_message_bytes),
    }


async def ensure_topic(admin: AdminClient, name: str, settings: KafkaSettings) -> None:
    """Create the topic with our settings unless it exists (idempotent, any replica)."""
    futures = admin.create_topics(
        [
            NewTopic(
                name,
                settings.partitions,
                settings.replication_factor,
                config=topic_config(settings.max_message_bytes),
            )
        ],
        request_timeout=10,
    )
    try:
        await asyncio.wrap_future(futures[name])
    except KafkaException as exc:
        error = exc.args[0]
        if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise PublishFailed(f"cannot create topic {name}: {error}") from exc
    # Creation returns once the controller has it; brokers learn of it a moment later, and a
    # record sent before then is refused as UNKNOWN_TOPIC_OR_PART. Wait for leaders.
    for _ in range(100):
        metadata = await asyncio.to_thread(admin.list_topics, name, 5)
        topic = metadata.topics.get(name)
        if (
            topic is not None
            and topic.error is None
            and topic.partitions
            and all(p.leader >= 0 for p in topic.partitions.values())
        ):
            return
        await asyncio.sleep(0.1)
    raise PublishFailed(f"topic {name} has no leaders yet")


class _Delivery(Delivery):
    def __init__(self, futures: list[asyncio.Future[None]]) -> None:
        self._futures = futures

    async def wait(self) -> None:
        results = await asyncio.gather(*self._futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise PublishFailed(str(result)) from result


async def _max_message_bytes(admin: AdminClient, resource: ConfigResource) -> int:
    futures = admin.describe_configs([resource], request_timeout=10)
    entries = await asyncio.wrap_future(futures[resource])
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
                await asyncio.wrap_future(futures[change])
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
        common = settings.client_config()
        self._producer = Producer(
            {
                **common,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": settings.linger_ms,
                "compression.type": "lz4",
                # The same partition for a key as Kafka's Java clients, so that consumers in any
                # language agree with us (and Subscribe can read one aggregate's partition).
                "partitioner": "murmur2_random",
                # Never give up on a queued record: a timed-out record followed by a delivered
                # one would leave a gap in an aggregate's order. During an outage records wait
                # here; if the queue fills, produce() refuses at once and the relay takes over.
                "message.timeout.ms": 0,
                # produce() refuses a record above this (key + value + headers + framing), so
                # it must hold the largest accepted event. A batch of several records stays
                # within min(this, batch.size = 1,000,000 by default), a batch of one large
                # record within records.max_batch_bytes: the topics take both.
                "message.max.bytes": self._message_bytes,
            }
        )
        self._admin = AdminClient(common)
        self._topics: set[str] = set()
        #: Topics whose max.message.bytes was found (or made) large enough.
        self._sized: set[str] = set()
        self._size_retry_at: dict[str, float] = {}
        self._topic_lock = asyncio.Lock()
        self._running = True
        self._poller = threading.Thread(target=self._poll, name="kafka-producer-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while self._running:
            self._producer.poll(0.1)

    async def _topic(self, aggregate_type: str) -> str:
        name = self._settings.topic(aggregate_type)
        if name not in self._topics:
            async with self._topic_lock:
                if name not in self._topics:
                    await ensure_topic(self._admin, name, self._topic_settings)
                    self._topics.add(name)
        if name not in self._sized and time.monotonic() >= self._size_retry_at.get(name, 0.0):
            async with self._topic_lock:
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
        topic = await self._topic(events[0].aggregate_type)
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        for event in events:
            future: asyncio.Future[None] = loop.create_future()

            def report(
                err: KafkaError | None, _msg: Any, future: asyncio.Future[None] = future
            ) -> None:
                loop.call_soon_threadsafe(_settle, future, err)

            try:
                self._producer.produce(
                    topic,
                    key=event.aggregate_id.encode(),
                    value=record_value(event),
                    headers=record_headers(event),
                    on_delivery=report,
                )
            except (BufferError, KafkaException) as exc:
                # The local queue is full (Kafka unreachable for a long time): fail this and
                # every later record of the batch, so that order is kept; the relay takes over.
                for pending in futures:
                    pending.cancel()
                raise PublishFailed(f"producer queue refused a record: {exc}") from exc
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


def _settle(future: asyncio.Future[None], err: KafkaError | None) -> None:
    if future.done():
        return
    if err is None:
        future.set_result(None)
    else:
        future.set_exception(PublishFailed(str(err)))
