"""PublicationLog on Cassandra: outbox markers and per-aggregate publication cursors.

* ``unpublished``: one row per announced append, (shard, aggregate_id, last_version), written
  before the append's Paxos round. Finding work reads these 16 small partitions, never the
  events table. Rows are removed by a range delete once the cursor passes them.
* ``publication_cursor``: the highest version published with all earlier ones. Written with
  ``USING TIMESTAMP <version>`` so that the highest version always wins, whichever replica or
  retry writes last: the cursor can never move backwards.
"""

from __future__ import annotations

import asyncio
import zlib
from datetime import datetime

from cassandra import ConsistencyLevel, DriverException, OperationTimedOut

from eventstore.domain.errors import StorageUnavailable
from eventstore.ports import PublicationLog
from eventstore.storage.aio import wrap
from eventstore.storage.connection import CassandraConnection
from eventstore.storage.schema import UNPUBLISHED_SHARDS

#: Relay reads at most this many markers per shard per pass; the rest wait for the next one.
PENDING_PAGE = 1000


def shard_of(aggregate_id: str) -> int:
    return zlib.crc32(aggregate_id.encode()) % UNPUBLISHED_SHARDS


class CassandraPublicationLog(PublicationLog):
    def __init__(self, connection: CassandraConnection) -> None:
        """Prepares its statements: blocking, so call it off the event loop."""
        self._session = connection.session
        ks = connection.settings.keyspace
        self._write = ConsistencyLevel.name_to_value[connection.settings.write_consistency]
        self._read = ConsistencyLevel.name_to_value[connection.settings.read_consistency]
        prepare = self._session.prepare
        self._insert_marker = prepare(
            f"INSERT INTO {ks}.unpublished (shard, aggregate_id, last_version, created_at) "
            "VALUES (?, ?, ?, ?)"
        )
        self._delete_markers = prepare(
            f"DELETE FROM {ks}.unpublished "
            "WHERE shard = ? AND aggregate_id = ? AND last_version <= ?"
        )
        self._select_markers = prepare(
            f"SELECT aggregate_id, created_at FROM {ks}.unpublished WHERE shard = ? LIMIT ?"
        )
        self._select_cursor = prepare(
            f"SELECT published FROM {ks}.publication_cursor WHERE aggregate_id = ?"
        )
        self._advance_cursor = prepare(
            f"UPDATE {ks}.publication_cursor USING TIMESTAMP ? SET published = ? "
            "WHERE aggregate_id = ?"
        )

    @classmethod
    async def create(cls, connection: CassandraConnection) -> CassandraPublicationLog:
        return await asyncio.to_thread(cls, connection)

    async def _run(self, statement: object, params: tuple[object, ...], level: int) -> list[object]:
        bound = statement.bind(params)  # type: ignore[attr-defined]
        bound.consistency_level = level
        try:
            return await wrap(self._session.execute_async(bound))
        except (DriverException, OperationTimedOut) as exc:
            raise StorageUnavailable(f"Cassandra: {type(exc).__name__}") from exc

    async def mark_pending(self, aggregate_id: str, through_version: int, at: datetime) -> None:
        await self._run(
            self._insert_marker,
            (shard_of(aggregate_id), aggregate_id, through_version, at),
            self._write,
        )

    async def published_through(self, aggregate_id: str) -> int:
        rows = await self._run(self._select_cursor, (aggregate_id,), self._read)
        return int(rows[0].published) if rows else 0  # type: ignore[attr-defined]

    async def mark_published(self, aggregate_id: str, through_version: int) -> None:
        # Cursor first: if we stop between the two, the markers merely cause a re-check.
        await self._run(
            self._advance_cursor, (through_version, through_version, aggregate_id), self._write
        )
        await self._run(
            self._delete_markers,
            (shard_of(aggregate_id), aggregate_id, through_version),
            self._write,
        )

    async def pending(self, older_than: datetime) -> list[str]:
        found: set[str] = set()
        for shard in range(UNPUBLISHED_SHARDS):
            rows = await self._run(self._select_markers, (shard, PENDING_PAGE), self._read)
            for row in rows:
                created_at = row.created_at.replace(tzinfo=older_than.tzinfo)  # type: ignore[attr-defined]
                if created_at < older_than:
                    found.add(row.aggregate_id)  # type: ignore[attr-defined]
        return sorted(found)
