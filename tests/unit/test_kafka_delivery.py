"""The Kafka publisher's own rules, without a broker: what counts as delivered, and when a new
topic counts as ready. The real broker proves the same in tests/integration/test_topic_creation.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest
from confluent_kafka import OFFSET_INVALID, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from eventstore.config import KafkaSettings
from eventstore.ports import PublishFailed
from eventstore.publishing import kafka
from eventstore.publishing.kafka import _Delivery, _settle, ensure_topic

Position = tuple[int, int]


def _future() -> asyncio.Future[Position]:
    return asyncio.get_running_loop().create_future()


async def test_a_record_reported_with_its_offset_is_delivered() -> None:
    futures = [_future(), _future()]
    _settle(futures[0], None, "t", 2, 0)
    _settle(futures[1], None, "t", 2, 7)
    delivery = _Delivery(futures)
    await delivery.wait()
    assert delivery.positions() == [(2, 0), (2, 7)]


async def test_a_broker_error_fails_the_delivery() -> None:
    future = _future()
    _settle(future, KafkaError(KafkaError.NOT_ENOUGH_REPLICAS), "t", 0, -1)
    with pytest.raises(PublishFailed, match="NOT_ENOUGH_REPLICAS"):
        await _Delivery([future]).wait()


@pytest.mark.parametrize(
    "offset",
    [
        # What librdkafka leaves on a record it counts as delivered because a later batch of
        # its partition succeeded (rd_kafka_dr_implicit_ack): the lost records of KAFKA-15591.
        OFFSET_INVALID,
        # The first record of a batch answered DUPLICATE_SEQUENCE_NUMBER, which librdkafka also
        # counts as delivered: its offsets count up from the error response's -1.
        -1,
        None,
    ],
)
async def test_success_without_a_log_offset_is_not_a_delivery(offset: int | None) -> None:
    confirmed, unproven = _future(), _future()
    _settle(confirmed, None, "t", 1, 41)
    _settle(unproven, None, "t", 1, offset)
    with pytest.raises(PublishFailed, match="without a log offset"):
        await _Delivery([confirmed, unproven]).wait()


async def test_a_report_without_a_partition_is_not_a_delivery() -> None:
    future = _future()
    _settle(future, None, "t", None, 3)
    with pytest.raises(PublishFailed):
        await _Delivery([future]).wait()


async def test_a_settled_record_stays_settled() -> None:
    future = _future()
    future.cancel()  # send() cancels the records of a batch the queue refused
    _settle(future, None, "t", 0, 1)
    assert future.cancelled()


def _done(result: object = None, error: KafkaError | None = None) -> concurrent.futures.Future[Any]:
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(KafkaException(error))
    return future


class _FakeAdmin:
    """A cluster that knows the topic and its leaders, but whose partition logs appear only
    after `log_after[p]` ListOffsets requests (answered NOT_LEADER_FOR_PARTITION until then)."""

    def __init__(self, partitions: int, log_after: dict[int, int]) -> None:
        self.partitions = partitions
        self.log_after = log_after
        self.list_offsets_calls = 0
        self.answered: list[set[int]] = []

    def create_topics(
        self, topics: list[Any], **_: Any
    ) -> dict[str, concurrent.futures.Future[Any]]:
        return {t.topic: _done(error=KafkaError(KafkaError.TOPIC_ALREADY_EXISTS)) for t in topics}

    def list_topics(self, name: str, _timeout: float) -> Any:
        partitions = {p: SimpleNamespace(id=p, leader=1) for p in range(self.partitions)}
        return SimpleNamespace(topics={name: SimpleNamespace(error=None, partitions=partitions)})

    def list_offsets(
        self, request: dict[TopicPartition, Any], **_: Any
    ) -> dict[TopicPartition, concurrent.futures.Future[Any]]:
        self.list_offsets_calls += 1
        answers: dict[TopicPartition, concurrent.futures.Future[Any]] = {}
        ready: set[int] = set()
        for tp in request:
            if self.list_offsets_calls > self.log_after.get(tp.partition, 0):
                answers[tp] = _done(SimpleNamespace(offset=0))
                ready.add(tp.partition)
            else:
                answers[tp] = _done(error=KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))
        self.answered.append(ready)
        return answers


def _settings() -> KafkaSettings:
    return KafkaSettings(partitions=4)


async def test_ensure_topic_waits_until_every_partition_has_its_log() -> None:
    # Leaders are in the metadata from the start (as a broker lists them before it has made the
    # logs); partition 3's log comes last.
    admin = _FakeAdmin(4, log_after={1: 1, 3: 4})
    await ensure_topic(cast(AdminClient, admin), "events.T", _settings())
    assert admin.list_offsets_calls == 5
    assert admin.answered[-1] == {0, 1, 2, 3}


async def test_ensure_topic_gives_up_naming_the_partitions_without_a_log(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kafka, "TOPIC_READY_TIMEOUT_S", 0.2)
    admin = _FakeAdmin(3, log_after={2: 10**6})
    with pytest.raises(PublishFailed, match=r"events\.T .*\[2\]"):
        await ensure_topic(cast(AdminClient, admin), "events.T", _settings())


async def test_ensure_topic_rides_out_a_broker_that_does_not_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin = _FakeAdmin(2, log_after={})
    answer: Callable[[str, float], Any] = admin.list_topics
    calls = 0

    def flaky(name: str, timeout: float) -> Any:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        return answer(name, timeout)

    monkeypatch.setattr(admin, "list_topics", flaky)
    await ensure_topic(cast(AdminClient, admin), "events.T", _settings())
    assert calls == 3
