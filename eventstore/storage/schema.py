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

#: Journal entries per partition of publication_journal (a writer's entries are read in order).
JOURNAL_BUCKET = 10_000


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
        # Publication bookkeeping (storage/outbox.py). Journal entries are only ever read
        # above a writer's settled point, and removed a whole partition at a time: a read never
        # meets a tombstone. Resurrected rows would only cause a harmless re-publication.
        f"""
        CREATE TABLE IF NOT EXISTS {keyspace}.publication_journal (
            writer     uuid,
            bucket     bigint,
            seq        bigint,
            aggregates frozen<list<text>>,
            PRIMARY KEY ((writer, bucket), seq)
        ) WITH gc_grace_seconds = 10800
          AND comment = 'Per server process: appends announced before their commit (group commit)'
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {keyspace}.publication_writers (
            shard     int,
            writer    uuid,
            heartbeat timestamp,
            resolved  bigint,
            PRIMARY KEY ((shard), writer)
        ) WITH gc_grace_seconds = 3600
          AND comment = 'Server processes with a journal: liveness and how far it is settled'
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {keyspace}.publication_parked (
            shard           int,
            aggregate_id    text,
            reason          text,
            since           timestamp,
            attempts        int,
            next_attempt_at timestamp,
            PRIMARY KEY ((shard), aggregate_id)
        ) WITH gc_grace_seconds = 3600
          AND comment = 'Aggregates whose publication keeps failing (retried with backoff)'
        """,
        # The catalog: Cassandra cannot list its partitions cheaply, so aggregates are listed
        # here once, by type and creation day, for reconciliation (eventstore-replay verify).
        f"""
        CREATE TABLE IF NOT EXISTS {keyspace}.aggregate_types (
            topic_key      text PRIMARY KEY,
            aggregate_type text,
            first_day      date
        ) WITH comment = 'Aggregate types; topic_key refuses two types sharing one Kafka topic'
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {keyspace}.aggregates_by_day (
            aggregate_type text,
            day            date,
            aggregate_id   text,
            PRIMARY KEY ((aggregate_type, day), aggregate_id)
        ) WITH comment = 'Every aggregate, by type and the day of its first append'
        """,
        # Personal data (storage/subject_keys.py): one row per data subject, written only by
        # conditional statements (created IF NOT EXISTS, erased and re-wrapped IF ...), so
        # that every replica seals a subject's events with one key and an erasure is final.
        f"""
        CREATE TABLE IF NOT EXISTS {keyspace}.subject_keys (
            subject       text PRIMARY KEY,
            key_id        uuid,
            master_key_id text,
            wrapped       blob,
            created_at    timestamp,
            erased_at     timestamp
        ) WITH comment = 'Per data subject: its data key wrapped by the master key; erased: null'
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {keyspace}.subject_aggregates (
            subject      text,
            aggregate_id text,
            PRIMARY KEY ((subject), aggregate_id)
        ) WITH comment = 'Aggregates holding events about a data subject (erasure drops snapshots)'
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {keyspace}.aggregate_subjects (
            aggregate_id text,
            subject      text,
            PRIMARY KEY ((aggregate_id), subject)
        ) WITH comment = 'Data subjects of the events of an aggregate (snapshots sealed for each)'
        """,
        # The schema registry (storage/schemas.py): versions are only ever inserted, each with
        # IF NOT EXISTS on its full key, so two registrations of one version cannot both win.
        f"""
        CREATE TABLE IF NOT EXISTS {keyspace}.event_schemas (
            aggregate_type text,
            event_type     text,
            version        int,
            format         text,
            document       blob,
            message_name   text,
            compatibility  text,
            upcast         text,
            registered_at  timestamp,
            registered_by  text,
            PRIMARY KEY ((aggregate_type, event_type), version)
        ) WITH comment = 'Event schemas per (aggregate type, event type); insert-only'
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {keyspace}.event_schema_types (
            aggregate_type text,
            event_type     text,
            PRIMARY KEY ((aggregate_type), event_type)
        ) WITH comment = 'The event types of each aggregate type that have a schema'
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
