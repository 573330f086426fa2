"""SubjectKeys on Cassandra: a subject's wrapped key in one row, changed only conditionally."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from cassandra.query import BatchStatement, BatchType

from eventstore.domain.personal import WrappedKey
from eventstore.ports import SubjectKeys
from eventstore.storage.aio import execute, prepare
from eventstore.storage.connection import CassandraConnection

_COLUMNS = "subject, key_id, master_key_id, wrapped, created_at, erased_at"


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _key(row: Any) -> WrappedKey:
    created_at = _utc(row["created_at"])
    assert created_at is not None
    return WrappedKey(
        subject=row["subject"],
        key_id=row["key_id"],
        master_key_id=row["master_key_id"],
        wrapped=row["wrapped"],
        created_at=created_at,
        erased_at=_utc(row["erased_at"]),
    )


class CassandraSubjectKeys(SubjectKeys):
    def __init__(self, connection: CassandraConnection) -> None:
        """Prepares its statements: blocking, so call it off the event loop."""
        self._session = connection.session
        settings = connection.settings
        ks = settings.keyspace
        self._write, self._read, self._serial = connection.levels
        self._create = prepare(
            self._session,
            f"INSERT INTO {ks}.subject_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS",
        )
        self._select = prepare(
            self._session, f"SELECT {_COLUMNS} FROM {ks}.subject_keys WHERE subject = ?"
        )
        self._erase = prepare(
            self._session,
            f"UPDATE {ks}.subject_keys SET wrapped = null, master_key_id = null, erased_at = ? "
            "WHERE subject = ? IF erased_at = null",
        )
        self._rewrap = prepare(
            self._session,
            f"UPDATE {ks}.subject_keys SET wrapped = ?, master_key_id = ? "
            "WHERE subject = ? IF key_id = ? AND master_key_id = ? AND erased_at = null",
        )
        self._all = prepare(self._session, f"SELECT {_COLUMNS} FROM {ks}.subject_keys")
        self._add_aggregate = prepare(
            self._session,
            f"INSERT INTO {ks}.subject_aggregates (subject, aggregate_id) VALUES (?, ?)",
        )
        self._add_subject = prepare(
            self._session,
            f"INSERT INTO {ks}.aggregate_subjects (aggregate_id, subject) VALUES (?, ?)",
        )
        self._subjects = prepare(
            self._session, f"SELECT subject FROM {ks}.aggregate_subjects WHERE aggregate_id = ?"
        )
        self._aggregates = prepare(
            self._session, f"SELECT aggregate_id FROM {ks}.subject_aggregates WHERE subject = ?"
        )

    @classmethod
    async def create_store(cls, connection: CassandraConnection) -> CassandraSubjectKeys:
        return await asyncio.to_thread(cls, connection)

    async def _conditional(self, statement: Any, values: tuple[Any, ...]) -> dict[str, Any]:
        bound = statement.bind(values)
        bound.consistency_level = self._write
        bound.serial_consistency_level = self._serial
        rows = await execute(self._session, bound)
        return dict(rows[0])

    async def create(self, key: WrappedKey) -> WrappedKey:
        row = await self._conditional(
            self._create,
            (
                key.subject,
                key.key_id,
                key.master_key_id,
                key.wrapped,
                key.created_at,
                key.erased_at,
            ),
        )
        if row["[applied]"]:
            return key
        return _key(row)  # a failed IF NOT EXISTS returns the row that exists

    async def fetch(self, subject: str) -> WrappedKey | None:
        bound = self._select.bind((subject,))
        bound.consistency_level = self._read
        rows = await execute(self._session, bound)
        return _key(rows[0]) if rows else None

    async def destroy(self, subject: str, at: datetime) -> WrappedKey:
        # An erased record first, in case the subject never had a key: no key is made for an
        # erased subject later. Both statements are conditional (never mix plain writes into
        # a row that Paxos writes).
        erased = WrappedKey(subject, uuid.UUID(int=0), None, None, at, at)
        created = await self.create(erased)
        if created is erased:
            return erased
        row = await self._conditional(self._erase, (at, subject))
        if row["[applied]"]:
            return WrappedKey(subject, created.key_id, None, None, created.created_at, at)
        stored = await self.fetch(subject)
        assert stored is not None  # erased records are never removed
        return stored

    async def rewrap(self, old: WrappedKey, new: WrappedKey) -> bool:
        row = await self._conditional(
            self._rewrap,
            (new.wrapped, new.master_key_id, old.subject, old.key_id, old.master_key_id),
        )
        return bool(row["[applied]"])

    async def keys(self) -> list[WrappedKey]:
        bound = self._all.bind(())
        bound.consistency_level = self._read
        return [_key(row) for row in await execute(self._session, bound)]

    async def add_aggregate(self, subject: str, aggregate_id: str) -> None:
        # Logged: both directions or neither (two partitions; once per pair and process).
        batch = BatchStatement(batch_type=BatchType.LOGGED, consistency_level=self._write)
        batch.add(self._add_aggregate, (subject, aggregate_id))
        batch.add(self._add_subject, (aggregate_id, subject))
        await execute(self._session, batch)

    async def subjects(self, aggregate_id: str) -> list[str]:
        bound = self._subjects.bind((aggregate_id,))
        bound.consistency_level = self._read
        return [row["subject"] for row in await execute(self._session, bound)]

    async def aggregates(self, subject: str) -> list[str]:
        bound = self._aggregates.bind((subject,))
        bound.consistency_level = self._read
        return [row["aggregate_id"] for row in await execute(self._session, bound)]
