"""eventstore-migrate: create what the store needs, idempotently: the Cassandra keyspace and
tables, the OpenSearch index template, and the indexer's dead-letter topic. (Event topics
are created on first use, with the same settings, by whichever server publishes first.)"""

from __future__ import annotations

import asyncio
import sys
import time

from confluent_kafka.admin import AdminClient

from eventstore.config import CassandraSettings, KafkaSettings, OpenSearchSettings
from eventstore.domain.errors import StorageUnavailable
from eventstore.ports import PublishFailed
from eventstore.publishing.kafka import ensure_max_message_bytes, ensure_topic
from eventstore.search.setup import ensure_template, make_client
from eventstore.storage.cassandra import apply_schema


async def migrate(
    cassandra: CassandraSettings,
    kafka: KafkaSettings,
    opensearch: OpenSearchSettings,
) -> None:
    await apply_schema(cassandra)
    admin = AdminClient(kafka.client_config())
    await ensure_topic(admin, kafka.dead_letter_topic, kafka)
    # A dead letter is as large as the largest event record; the topic may predate that setting.
    await ensure_max_message_bytes(admin, kafka.dead_letter_topic, kafka.max_message_bytes)
    client = make_client(opensearch)
    try:
        await asyncio.to_thread(ensure_template, client, opensearch)
    finally:
        client.close()


def main() -> None:
    cassandra, kafka, opensearch = CassandraSettings(), KafkaSettings(), OpenSearchSettings()
    started = time.monotonic()
    try:
        asyncio.run(migrate(cassandra, kafka, opensearch))
    except (StorageUnavailable, PublishFailed) as exc:
        print(
            f"eventstore-migrate: {exc} (are the services up? `make services-status`)",
            file=sys.stderr,
        )
        raise SystemExit(1) from exc
    print(
        f"eventstore-migrate: keyspace {cassandra.keyspace!r}, index template "
        f"{opensearch.index_prefix!r}, topic {kafka.dead_letter_topic!r} ready "
        f"({time.monotonic() - started:.1f} s)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
