"""SnapshotStore on Cassandra: one partition per aggregate, newest version first."""

from __future__ import annotations

import asyncio
from datetime import UTC

from eventstore.domain.snapshots import Snapshot
from eventstore.ports import SnapshotStore
from eventstore.storage.aio import execute, prepare
from eventstore.storage.connection import CassandraConnection

MAX_VERSION = 2**63 - 1


class CassandraSnapshotStore(SnapshotStore):
    def __init__(self, connection: CassandraConnection) -> None:
        """Prepares its statements: blocking, so call it off the event loop."""
        self._session = connection.session
        settings = connection.settings
        ks = settings.keyspace
        self._write, self._read, _ = connection.levels
        self._insert = prepare(
            self._session,
            f"INSERT INTO {ks}.snapshots (aggregate_id, version, state, state_type, "
            "schema_version, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        self._select = prepare(
            self._session,
            f"SELECT version, state, state_type, schema_version, created_at FROM {ks}.snapshots "
            "WHERE aggregate_id = ? AND version <= ? LIMIT 1",
        )

        self._versions = prepare(
            self._session, f"SELECT version FROM {ks}.snapshots WHERE aggregate_id = ?"
        )
        self._delete = prepare(self._session, f"DELETE FROM {ks}.snapshots WHERE aggregate_id = ?")

    @classmethod
    async def create(cls, connection: CassandraConnection) -> CassandraSnapshotStore:
        return await asyncio.to_thread(cls, connection)

    async def save(self, snapshot: Snapshot) -> None:
        bound = self._insert.bind(
            (
                snapshot.aggregate_id,
                snapshot.version,
                snapshot.state,
                snapshot.state_type,
                snapshot.schema_version,
                snapshot.created_at,
            )
        )
        bound.consistency_level = self._write
        await execute(self._session, bound)

    async def delete(self, aggregate_id: str) -> int:
        bound = self._versions.bind((aggregate_id,))
        bound.consistency_level = self._read
        count = len(await execute(self._session, bound))
        # One partition tombstone: the states stay in older SSTables until compaction merges
        # them with it (README, Security: what erasure reaches).
        delete = self._delete.bind((aggregate_id,))
        delete.consistency_level = self._write
        await execute(self._session, delete)
        return count

    async def latest(self, aggregate_id: str, max_version: int | None) -> Snapshot | None:
        bound = self._select.bind((aggregate_id, max_version or MAX_VERSION))
        bound.consistency_level = self._read
        rows = await execute(self._session, bound)
        if not rows:
            return None
        row = rows[0]
        created_at = row["created_at"]
        return Snapshot(
            aggregate_id=aggregate_id,
            version=row["version"],
            state=row["state"] or b"",
            state_type=row["state_type"],
            schema_version=row["schema_version"],
            created_at=created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC),
        )
