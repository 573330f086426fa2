"""Downstream of a benchmark run: how many events Kafka and OpenSearch hold, how long they take
to hold every committed one, and the run's own names (keyspace, topics, indices) so that those
counts are exact, removed at the end."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from cassandra.cluster import Cluster
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from opensearchpy.exceptions import OpenSearchException

from benchmarks.figures import Lag
from eventstore.config import CassandraSettings, KafkaSettings, OpenSearchSettings
from eventstore.search.documents import template_name
from eventstore.search.setup import make_client

POLL_S = 0.1


@dataclass(frozen=True)
class Names:
    """One run's keyspace, topic prefix, index prefix and indexer group, shared by the server
    and the indexer through the environment so that both agree."""

    run: str

    @classmethod
    def fresh(cls) -> Names:
        return cls(uuid.uuid4().hex[:8])

    @property
    def keyspace(self) -> str:
        return f"bench_append_{self.run}"

    @property
    def topic_prefix(self) -> str:
        return f"bench-append-{self.run}."

    @property
    def index_prefix(self) -> str:
        return f"bench-append-{self.run}"

    def env(self) -> dict[str, str]:
        return {
            "EVENTSTORE_CASSANDRA_KEYSPACE": self.keyspace,
            "EVENTSTORE_KAFKA_TOPIC_PREFIX": self.topic_prefix,
            "EVENTSTORE_KAFKA_DEAD_LETTER_TOPIC": f"{self.index_prefix}-dead-letter",
            "EVENTSTORE_OPENSEARCH_INDEX_PREFIX": self.index_prefix,
            "EVENTSTORE_INDEXER_GROUP_ID": f"bench-append-{self.run}",
            # Consumer groups' own topics, removed with the run's others (same stem).
            "EVENTSTORE_KAFKA_GROUP_TOPIC_PREFIX": f"{self.index_prefix}-groups.",
        }


class Downstream:
    """Counts one aggregate type's events in Kafka (its topic's records: one per event) and in
    OpenSearch (searchable documents of that type)."""

    def __init__(self, names: Names) -> None:
        self._kafka = KafkaSettings(topic_prefix=names.topic_prefix)
        self._search = OpenSearchSettings(index_prefix=names.index_prefix)
        self._consumer = Consumer(
            {**self._kafka.client_config(), "group.id": f"bench-count-{names.run}"}
        )
        self._client = make_client(self._search)

    def published(self, aggregate_type: str) -> int:
        topic = self._kafka.topic(aggregate_type)
        # All topics, not this one: asking for a missing topic by name may create it.
        found = self._consumer.list_topics(timeout=10).topics.get(topic)
        if found is None:
            return 0
        total = 0
        for partition in found.partitions:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=10, cached=False
            )
            total += high - low
        return total

    def indexed(self, aggregate_type: str) -> int:
        found = self._client.count(
            index=self._search.alias,
            body={"query": {"term": {"aggregate_type": aggregate_type}}},
            ignore_unavailable=True,
            allow_no_indices=True,
        )
        return int(found["count"])

    def count(self, where: str, aggregate_type: str) -> int | None:
        """Events of the type in "kafka" or "opensearch"; None when it cannot say right now (an
        index whose shards are still starting, a broker that does not answer)."""
        try:
            if where == "kafka":
                return self.published(aggregate_type)
            return self.indexed(aggregate_type)
        except (KafkaException, OpenSearchException):
            return None

    def catch_up(self, aggregate_type: str, committed: int, timeout_s: float) -> tuple[Lag, Lag]:
        """Publication and indexing lag of the events committed by a load that just ended:
        what each lacked then, and when it held them all (polled every POLL_S)."""
        ended = time.monotonic()
        lags = {}
        for where in ("kafka", "opensearch"):
            found = self.count(where, aggregate_type)
            behind = None if found is None else max(committed - found, 0)
            lags[where] = Lag(behind, 0.0 if behind == 0 else None)
        while time.monotonic() - ended < timeout_s:
            waiting = [where for where, lag in lags.items() if lag.caught_up_s is None]
            if not waiting:
                break
            time.sleep(POLL_S)
            for where in waiting:
                found = self.count(where, aggregate_type)
                if found is not None and found >= committed:
                    lags[where].caught_up_s = time.monotonic() - ended
        return lags["kafka"], lags["opensearch"]

    def close(self) -> None:
        self._consumer.close()
        self._client.close()


def remove(names: Names) -> None:
    """Drop the run's keyspace, topics, indices and index template."""
    kafka = KafkaSettings()
    admin = AdminClient(kafka.client_config())
    topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(names.index_prefix)]
    if topics:
        for future in admin.delete_topics(topics, operation_timeout=30).values():
            future.result()
    search = OpenSearchSettings(index_prefix=names.index_prefix)
    client = make_client(search)
    client.indices.delete(index=f"{names.index_prefix}*", ignore_unavailable=True)
    client.indices.delete_index_template(name=template_name(search), ignore=[404])
    client.close()
    hosts, port = CassandraSettings().contact_points()
    cluster = Cluster(hosts, port=port, protocol_version=5)
    try:
        cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {names.keyspace}", timeout=120)
    finally:
        cluster.shutdown()
