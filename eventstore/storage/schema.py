"""Cassandra schema: one partition per aggregate, clustered by row kind and version.

A partition holds two kinds of rows, so that one conditional batch on one partition
(one Paxos round) can both enforce the expected version and refuse a repeated event id:

* kind 0, (version, event_id): the events, in version order;
* kind 1, (0, event_id): one row per event id, naming the version it was committed at.
  Its ``IF NOT EXISTS`` makes a retried append fail its condition, and the failed
  condition returns these rows, so a retry learns the original versions in the same round trip.

Static columns hold the stream head (current version), the aggregate type and the first and
last append times. Rows are only ever inserted by that conditional batch: nothing updates or
deletes an event.
"""

from __future__ import annotations

EVENT_ROW = 0
EVENT_ID_ROW = 1


def keyspace_cql(
    keyspace: str, strategy: str, replication_factor: int, datacenter: str | None
) -> str:
    if strategy == "NetworkTopologyStrategy":
        if not datacenter:
            raise ValueError("NetworkTopologyStrategy needs EVENTSTORE_CASSANDRA_LOCAL_DATACENTER")
        replication = f"'class': 'NetworkTopologyStrategy', '{datacenter}': {replication_factor}"
    else:
        replication = f"'class': 'SimpleStrategy', 'replication_factor': {replication_factor}"
    return f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {{{replication}}}"


def table_cql(keyspace: str) -> list[str]:
    return [
        f"""
        CREATE TABLE IF NOT EXISTS {keyspace}.events (
            aggregate_id      text,
            kind              tinyint,
            version           bigint,
            event_id          uuid,
            head              bigint STATIC,
            aggregate_type    text STATIC,
            created_at        timestamp STATIC,
            updated_at        timestamp STATIC,
            event_type        text,
            content_type      text,
            data              blob,
            metadata          frozen<map<text, text>>,
            recorded_at       timestamp,
            committed_version bigint,
            PRIMARY KEY ((aggregate_id), kind, version, event_id)
        ) WITH CLUSTERING ORDER BY (kind ASC, version ASC, event_id ASC)
          AND comment = 'Event streams, one partition per aggregate; insert-only'
        """,
    ]
