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

from dataclasses import dataclass

EVENT_ROW = 0
EVENT_ID_ROW = 1

#: Markers of possibly unpublished appends are spread over this many partitions. Every replica
#: must agree on it, for ever: changing it would strand markers.
UNPUBLISHED_SHARDS = 16


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
        f"""
        CREATE TABLE IF NOT EXISTS {keyspace}.publication_cursor (
            aggregate_id text PRIMARY KEY,
            published    bigint
        ) WITH comment = 'Per aggregate: versions 1..published are in Kafka'
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {keyspace}.snapshots (
            aggregate_id   text,
            version        bigint,
            state          blob,
            state_type     text,
            schema_version int,
            created_at     timestamp,
            PRIMARY KEY ((aggregate_id), version)
        ) WITH CLUSTERING ORDER BY (version DESC)
          AND comment = 'Aggregate state as of a version; derived data, never replaces events'
        """,
        # Bookkeeping, not events: rows come and go. Short gc_grace because a resurrected
        # marker only causes a harmless re-check.
        f"""
        CREATE TABLE IF NOT EXISTS {keyspace}.unpublished (
            shard        int,
            aggregate_id text,
            last_version bigint,
            created_at   timestamp,
            PRIMARY KEY ((shard), aggregate_id, last_version)
        ) WITH gc_grace_seconds = 10800
          AND comment = 'Outbox markers: appends that may not be in Kafka yet'
        """,
    ]


_EVENT_COLUMNS = (
    "event_id, version, event_type, content_type, data, metadata, recorded_at, aggregate_type"
)


@dataclass(frozen=True, slots=True)
class Statements:
    """Every CQL statement the adapter runs (all prepared once at start-up)."""

    #: Conditional: moves the head of an existing stream; the batch's events ride on it.
    advance_head: str
    #: Conditional: creates the head of a new stream.
    create_head: str
    #: Event row; only ever added to a batch that also carries one of the two conditions above.
    insert_event: str
    #: Event-id row, IF NOT EXISTS: refuses a repeated event id within the aggregate.
    insert_event_id: str
    select_head: str
    select_event_ids: str
    describe: str
    read_forwards: str
    read_backwards: str
    read_backwards_from_end: str


def cql(ks: str) -> Statements:
    where_events = f"WHERE aggregate_id = ? AND kind = {EVENT_ROW}"
    select_events = f"SELECT {_EVENT_COLUMNS} FROM {ks}.events {where_events}"
    return Statements(
        advance_head=f"UPDATE {ks}.events SET head = ?, updated_at = ? "
        "WHERE aggregate_id = ? IF head = ? AND aggregate_type = ?",
        create_head=f"UPDATE {ks}.events SET head = ?, aggregate_type = ?, created_at = ?, "
        "updated_at = ? WHERE aggregate_id = ? IF head = null",
        insert_event=f"INSERT INTO {ks}.events (aggregate_id, kind, version, event_id, "
        "event_type, content_type, data, metadata, recorded_at) "
        f"VALUES (?, {EVENT_ROW}, ?, ?, ?, ?, ?, ?, ?)",
        insert_event_id=f"INSERT INTO {ks}.events (aggregate_id, kind, version, event_id, "
        f"committed_version, recorded_at) VALUES (?, {EVENT_ID_ROW}, 0, ?, ?, ?) IF NOT EXISTS",
        select_head=f"SELECT head, aggregate_type FROM {ks}.events WHERE aggregate_id = ? LIMIT 1",
        select_event_ids="SELECT head, aggregate_type, event_id, committed_version, recorded_at "
        f"FROM {ks}.events WHERE aggregate_id = ? AND kind = {EVENT_ID_ROW} AND version = 0 "
        "AND event_id IN ?",
        describe=f"SELECT head, aggregate_type, created_at, updated_at FROM {ks}.events "
        "WHERE aggregate_id = ? LIMIT 1",
        read_forwards=f"{select_events} AND version >= ? LIMIT ?",
        read_backwards=f"{select_events} AND version <= ? ORDER BY kind DESC, version DESC LIMIT ?",
        read_backwards_from_end=f"{select_events} ORDER BY kind DESC, version DESC LIMIT ?",
    )
