"""AggregateCatalog on Cassandra: aggregate types, and aggregates by type and creation day.

Type names that Kafka would map to one topic (it treats '.' and '_' in topic names alike) share
a ``topic_key``; registering a type is a lightweight transaction on that key, so two such
types can never both be accepted, whichever replicas race to register them.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

from cassandra.query import BatchStatement, BatchType

from eventstore.ports import AggregateCatalog
from eventstore.storage.aio import execute, prepare, translated
from eventstore.storage.connection import CassandraConnection


def topic_key(aggregate_type: str) -> str:
    """What Kafka compares when it refuses colliding topic names ('.' and '_' are alike)."""
    return aggregate_type.replace(".", "_")


def _day(at: datetime) -> date:
    return at.astimezone(UTC).date()


class CassandraAggregateCatalog(AggregateCatalog):
    def __init__(self, connection: CassandraConnection) -> None:
        """Prepares its statements: blocking, so call it off the event loop."""
        self._session = connection.session
        settings = connection.settings
        ks = settings.keyspace
        self._write, self._read, self._serial = connection.levels
        self._register = prepare(
            self._session,
            f"INSERT INTO {ks}.aggregate_types (topic_key, aggregate_type, first_day) "
            "VALUES (?, ?, ?) IF NOT EXISTS",
        )
        self._select_types = prepare(
            self._session, f"SELECT aggregate_type, first_day FROM {ks}.aggregate_types"
        )
        self._insert = prepare(
            self._session,
            f"INSERT INTO {ks}.aggregates_by_day (aggregate_type, day, aggregate_id) "
            "VALUES (?, ?, ?)",
        )
        self._select = prepare(
            self._session,
            f"SELECT aggregate_id FROM {ks}.aggregates_by_day WHERE aggregate_type = ? AND day = ?",
        )

    @classmethod
    async def create(cls, connection: CassandraConnection) -> CassandraAggregateCatalog:
        return await asyncio.to_thread(cls, connection)

    async def _run(self, statement: Any) -> list[Any]:
        return await execute(self._session, statement)

    async def register_type(self, aggregate_type: str, at: datetime) -> str | None:
        bound = self._register.bind((topic_key(aggregate_type), aggregate_type, _day(at)))
        bound.consistency_level = self._write
        bound.serial_consistency_level = self._serial
        rows = await self._run(bound)
        if not rows or rows[0]["[applied]"]:
            return None
        existing: str = rows[0]["aggregate_type"]
        return None if existing == aggregate_type else existing

    async def add(self, entries: Sequence[tuple[str, str]], at: datetime) -> None:
        # One unlogged batch per partition (type, day): a single mutation however many
        # aggregates of that type the group commit carries.
        by_type: dict[str, list[str]] = defaultdict(list)
        for aggregate_type, aggregate_id in entries:
            by_type[aggregate_type].append(aggregate_id)
        day = _day(at)
        statements = []
        for aggregate_type, ids in by_type.items():
            batch = BatchStatement(batch_type=BatchType.UNLOGGED, consistency_level=self._write)
            for aggregate_id in ids:
                batch.add(self._insert, (aggregate_type, day, aggregate_id))
            statements.append(batch)
        await asyncio.gather(*(self._run(statement) for statement in statements))

    async def types(self) -> dict[str, date]:
        bound = self._select_types.bind(())
        bound.consistency_level = self._read
        rows = await self._run(bound)
        return {row["aggregate_type"]: row["first_day"].date() for row in rows}

    async def aggregates(self, aggregate_type: str, day: date) -> list[str]:
        bound = self._select.bind((aggregate_type, day))
        bound.consistency_level = self._read
        bound.fetch_size = 5000

        def fetch_all() -> list[str]:
            # The driver pages through the partition itself; a reconciliation tool's call, not
            # the request path, so a thread may block on it.
            return [row["aggregate_id"] for row in self._session.execute(bound)]

        with translated():
            return await asyncio.to_thread(fetch_all)
