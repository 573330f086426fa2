"""Each service of the local stack really answers: a round trip through each."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request
import uuid

import pytest
from cassandra.cluster import Cluster
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from eventstore.config import CassandraSettings
from tests.support import unique

pytestmark = pytest.mark.integration


def test_cassandra_write_then_read(cassandra_hosts: str) -> None:
    hosts, port = CassandraSettings(hosts=cassandra_hosts).contact_points()
    cluster = Cluster(hosts, port=port)
    try:
        session = cluster.connect()
        keyspace = unique("stack").replace("-", "_")
        session.execute(
            f"CREATE KEYSPACE {keyspace} WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}",
            timeout=60,
        )
        session.execute(f"CREATE TABLE {keyspace}.kv (k text PRIMARY KEY, v text)", timeout=60)
        value = uuid.uuid4().hex
        session.execute(f"INSERT INTO {keyspace}.kv (k, v) VALUES (%s, %s)", ("key", value))
        row = session.execute(f"SELECT v FROM {keyspace}.kv WHERE k = %s", ("key",)).one()
        assert row.v == value
        session.execute(f"DROP KEYSPACE {keyspace}", timeout=60)
    finally:
        cluster.shutdown()


def test_kafka_produce_then_consume(endpoints: dict[str, str]) -> None:
    bootstrap = endpoints["EVENTSTORE_KAFKA_BOOTSTRAP"]
    topic = unique("stack-roundtrip")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    sent = {f"key-{i}": uuid.uuid4().hex for i in range(10)}
    for key, value in sent.items():
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("stack-group"),
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    received: dict[str, str] = {}
    deadline = time.monotonic() + 30
    try:
        while len(received) < len(sent) and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            if message.error():
                raise KafkaException(message.error())
            received[bytes(message.key() or b"").decode()] = bytes(message.value() or b"").decode()
    finally:
        consumer.close()
    assert received == sent
    admin.delete_topics([topic])[topic].result(30)


def _http(method: str, url: str, body: object | None = None) -> dict[str, object]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        result: dict[str, object] = json.load(response)
        return result


def test_opensearch_index_then_search(endpoints: dict[str, str]) -> None:
    base = endpoints["EVENTSTORE_OPENSEARCH_URL"].rstrip("/")
    index = unique("stack-roundtrip")
    _http(
        "PUT",
        f"{base}/{index}",
        {
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": {"properties": {"event_type": {"type": "keyword"}}},
        },
    )
    _http("PUT", f"{base}/{index}/_doc/1?refresh=true", {"event_type": "OrderPlaced"})
    _http("PUT", f"{base}/{index}/_doc/2?refresh=true", {"event_type": "OrderShipped"})
    found = _http(
        "POST", f"{base}/{index}/_search", {"query": {"term": {"event_type": "OrderShipped"}}}
    )
    hits = found["hits"]
    assert isinstance(hits, dict)
    assert [h["_id"] for h in hits["hits"]] == ["2"]
    _http("DELETE", f"{base}/{index}")


async def test_stack_status_reports_every_service_up(endpoints: dict[str, str]) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "devstack", "status", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    lines = out.decode().splitlines()
    assert process.returncode == 0, out.decode()
    for name in ("cassandra", "kafka", "opensearch"):
        assert any(line.split()[:2] == [name, "up"] for line in lines), lines
