"""The fault-proxy fixtures fail one test's connections to the real services, and only those."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid

import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from devstack import kafka
from devstack.proxy import FaultProxy
from tests.support import unique

pytestmark = pytest.mark.integration


def cluster_name(base_url: str, timeout_s: float = 5) -> str:
    with urllib.request.urlopen(base_url, timeout=timeout_s) as response:
        name: str = json.load(response)["cluster_name"]
        return name


async def test_opensearch_through_a_proxy_that_is_cut_paused_and_restored(
    opensearch_fault_proxy: FaultProxy, opensearch_url: str
) -> None:
    proxied = f"http://{opensearch_fault_proxy.address}"
    direct = await asyncio.to_thread(cluster_name, opensearch_url)
    assert await asyncio.to_thread(cluster_name, proxied) == direct

    await opensearch_fault_proxy.cut()
    with pytest.raises(urllib.error.URLError) as refused:
        await asyncio.to_thread(cluster_name, proxied)
    assert isinstance(refused.value.reason, ConnectionRefusedError)
    assert await asyncio.to_thread(cluster_name, opensearch_url) == direct  # others unaffected

    await opensearch_fault_proxy.pause()
    with pytest.raises(TimeoutError):
        await asyncio.to_thread(cluster_name, proxied, 0.5)

    await opensearch_fault_proxy.restore()
    assert await asyncio.to_thread(cluster_name, proxied) == direct


def produce(bootstrap: str, topic: str, timeout_s: float) -> None:
    """One record, acknowledged by the broker within `timeout_s`, or KafkaException."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "message.timeout.ms": int(timeout_s * 1000)}
    )
    failures: list[KafkaException] = []

    def delivered(error: object, _message: object) -> None:
        if error is not None:
            failures.append(KafkaException(error))

    producer.produce(topic, value=uuid.uuid4().bytes, on_delivery=delivered)
    assert producer.flush(timeout_s + 5) == 0
    if failures:
        raise failures[0]


async def test_kafka_through_the_faulty_listener_is_cut_for_that_client_only(
    kafka_fault_proxy: FaultProxy, kafka_bootstrap: str
) -> None:
    assert kafka_fault_proxy.address == kafka.FAULTY_BOOTSTRAP
    topic = unique("fault-proxy")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    await asyncio.to_thread(
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[
            topic
        ].result,
        30,
    )
    try:
        # Through the proxy, the broker advertises the proxy: every connection goes through it.
        proxied_admin = AdminClient({"bootstrap.servers": kafka_fault_proxy.address})
        metadata = await asyncio.to_thread(proxied_admin.list_topics, timeout=10)
        assert [f"{b.host}:{b.port}" for b in metadata.brokers.values()] == [kafka.FAULTY_BOOTSTRAP]
        await asyncio.to_thread(produce, kafka_fault_proxy.address, topic, 10)

        await kafka_fault_proxy.cut()
        with pytest.raises(KafkaException):
            await asyncio.to_thread(produce, kafka_fault_proxy.address, topic, 2)
        await asyncio.to_thread(produce, kafka_bootstrap, topic, 10)  # others unaffected

        await kafka_fault_proxy.restore()
        await asyncio.to_thread(produce, kafka_fault_proxy.address, topic, 30)
    finally:
        await asyncio.to_thread(admin.delete_topics([topic])[topic].result, 30)
