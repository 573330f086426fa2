"""PublicationLog on Cassandra: writer journals, publication cursors, parked aggregates.

* ``publication_journal``: one row per group commit of a server process (a *writer*), naming
  the aggregates whose appends it is about to commit. Partitioned by (writer, seq bucket); read
  only above the writer's settled point and removed whole partitions at a time, so no read
  ever walks tombstones, however long the service runs.
* ``publication_writers``: one small partition; per writer its heartbeat and settled point.
* ``publication_cursor``: the highest version published with all earlier ones. Written with
  ``USING TIMESTAMP <version>`` so that the highest version always wins, whichever replica or
  retry writes last: the cursor can never move backwards.
* ``publication_parked``: aggregates whose publication keeps failing (rare; one partition).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from cassandra import ConsistencyLevel

from eventstore.ports import ParkedAggregate, PublicationLog, WriterState
from eventstore.storage.aio import execute, prepare
from eventstore.storage.connection import CassandraConnection
from eventstore.storage.schema import JOURNAL_BUCKET


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class CassandraPublicationLog(PublicationLog):
    def __init__(self, connection: CassandraConnection) -> None:
        """Prepares its statements: blocking, so call it off the event loop."""
        self._session = connection.session
        ks = connection.settings.keyspace
        self._write = ConsistencyLevel.name_to_value[connection.settings.write_consistency]
        self._read = ConsistencyLevel.name_to_value[connection.settings.read_consistency]
        self._insert_entry = prepare(
            self._session,
            f"INSERT INTO {ks}.publication_journal (writer, bucket, seq, aggregates) "
            "VALUES (?, ?, ?, ?)",
        )
        self._select_entries = prepare(
            self._session,
            f"SELECT seq, aggregates FROM {ks}.publication_journal "
            "WHERE writer = ? AND bucket = ? AND seq > ? LIMIT ?",
        )
        self._delete_bucket = prepare(
            self._session, f"DELETE FROM {ks}.publication_journal WHERE writer = ? AND bucket = ?"
        )
        self._beat = prepare(
            self._session,
            f"UPDATE {ks}.publication_writers SET heartbeat = ?, resolved = ? "
            "WHERE shard = 0 AND writer = ?",
        )
        self._settle = prepare(
            self._session,
            f"UPDATE {ks}.publication_writers SET resolved = ? WHERE shard = 0 AND writer = ?",
        )
        self._select_writers = prepare(
            self._session,
            f"SELECT writer, heartbeat, resolved FROM {ks}.publication_writers WHERE shard = 0",
        )
        self._delete_writer = prepare(
            self._session, f"DELETE FROM {ks}.publication_writers WHERE shard = 0 AND writer = ?"
        )
        self._select_cursor = prepare(
            self._session, f"SELECT published FROM {ks}.publication_cursor WHERE aggregate_id = ?"
        )
        self._advance_cursor = prepare(
            self._session,
            f"UPDATE {ks}.publication_cursor USING TIMESTAMP ? SET published = ? "
            "WHERE aggregate_id = ?",
        )
        self._insert_parked = prepare(
            self._session,
            f"INSERT INTO {ks}.publication_parked (shard, aggregate_id, reason, since, attempts, "
            "next_attempt_at) VALUES (0, ?, ?, ?, ?, ?)",
        )
        self._delete_parked = prepare(
            self._session,
            f"DELETE FROM {ks}.publication_parked WHERE shard = 0 AND aggregate_id = ?",
        )
        self._select_parked = prepare(
            self._session,
            f"SELECT aggregate_id, reason, since, attempts, next_attempt_at "
            f"FROM {ks}.publication_parked WHERE shard = 0",
        )

    @classmethod
    async def create(cls, connection: CassandraConnection) -> CassandraPublicationLog:
        return await asyncio.to_thread(cls, connection)

    async def _run(self, statement: Any, params: tuple[object, ...], level: int) -> list[Any]:
        bound = statement.bind(params)
        bound.consistency_level = level
        return await execute(self._session, bound)

    # --- journal -------------------------------------------------------------------------

    async def record(self, writer: UUID, seq: int, aggregate_ids: Sequence[str]) -> None:
        await self._run(
            self._insert_entry,
            (writer, seq // JOURNAL_BUCKET, seq, list(aggregate_ids)),
            self._write,
        )

    async def entries(self, writer: UUID, after: int, limit: int) -> list[tuple[int, list[str]]]:
        bucket = (after + 1) // JOURNAL_BUCKET
        while True:
            rows = await self._run(self._select_entries, (writer, bucket, after, limit), self._read)
            if rows:
                return [(int(row["seq"]), list(row["aggregates"] or [])) for row in rows]
            # Entries are dense per writer, so an empty bucket after the current one is the end.
            # A bucket can only be empty up to its end when its writer's writes all failed.
            following = await self._run(
                self._select_entries, (writer, bucket + 1, after, 1), self._read
            )
            if not following:
                return []
            bucket += 1

    async def heartbeat(self, writer: UUID, resolved: int, at: datetime) -> None:
        await self._run(self._beat, (at, resolved, writer), self._write)

    async def settle(self, writer: UUID, resolved: int) -> None:
        await self._run(self._settle, (resolved, writer), self._write)

    async def writers(self) -> list[WriterState]:
        rows = await self._run(self._select_writers, (), self._read)
        return [
            WriterState(row["writer"], _utc(row["heartbeat"]), int(row["resolved"] or 0))
            for row in rows
            if row["heartbeat"] is not None
        ]

    async def forget(self, writer: UUID, after: int, through: int, retire: bool = False) -> None:
        # Whole buckets only: a partition delete is one tombstone that no read ever meets
        # (entries are read above the settled point, i.e. in later buckets).
        # A writer that stopped may have left the bucket before its settled point, too.
        first = max(after // JOURNAL_BUCKET - (1 if retire else 0), 0)
        # Without `retire`, the bucket holding `through` stays until its last entry is settled.
        last = through // JOURNAL_BUCKET if retire else (through + 1) // JOURNAL_BUCKET - 1
        await asyncio.gather(
            *(
                self._run(self._delete_bucket, (writer, bucket), self._write)
                for bucket in range(first, last + 1)
            )
        )
        if retire:
            await self._run(self._delete_writer, (writer,), self._write)

    # --- cursors -------------------------------------------------------------------------

    async def published_through(self, aggregate_id: str) -> int:
        rows = await self._run(self._select_cursor, (aggregate_id,), self._read)
        return int(rows[0]["published"]) if rows else 0

    async def mark_published(self, aggregate_id: str, through_version: int) -> None:
        await self._run(
            self._advance_cursor, (through_version, through_version, aggregate_id), self._write
        )

    # --- parked aggregates ---------------------------------------------------------------

    async def park(self, parked: ParkedAggregate) -> None:
        await self._run(
            self._insert_parked,
            (
                parked.aggregate_id,
                parked.reason,
                parked.since,
                parked.attempts,
                parked.next_attempt_at,
            ),
            self._write,
        )

    async def unpark(self, aggregate_id: str) -> None:
        await self._run(self._delete_parked, (aggregate_id,), self._write)

    async def parked(self) -> list[ParkedAggregate]:
        rows = await self._run(self._select_parked, (), self._read)
        return [
            ParkedAggregate(
                row["aggregate_id"],
                row["reason"] or "",
                _utc(row["since"]),
                int(row["attempts"] or 0),
                _utc(row["next_attempt_at"]),
            )
            for row in rows
        ]
