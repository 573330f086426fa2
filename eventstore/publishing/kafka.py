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
from collections.abc import Sequence
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from eventstore.config import KafkaSettings
from eventstore.domain.events import RecordedEvent
from eventstore.ports import Delivery, EventPublisher, PublishFailed
from eventstore.publishing.records import record_headers, record_value

log = structlog.get_logger(__name__)


def topic_config() -> dict[str, str]:
    # Events are never deleted: keep every record for ever, whatever the broker defaults say.
    return {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}


async def ensure_topic(admin: AdminClient, name: str, settings: KafkaSettings) -> None:
    """Create the topic with our settings unless it exists (idempotent, any replica)."""
    futures = admin.create_topics(
        [NewTopic(name, settings.partitions, settings.replication_factor, config=topic_config())],
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


class KafkaEventPublisher(EventPublisher):
    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
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
            }
        )
        self._admin = AdminClient(common)
        self._topics: set[str] = set()
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
                    await ensure_topic(self._admin, name, self._settings)
                    self._topics.add(name)
        return name

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
