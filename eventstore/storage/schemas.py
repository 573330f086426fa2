"""SchemaRegistry on Cassandra: one partition per (aggregate type, event type), clustered by
version. A version is written by a lightweight transaction (INSERT … IF NOT EXISTS on its full
key), so of replicas racing to register the same next version exactly one wins; the others
learn it from the unapplied answer and re-check against the winner."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC
from typing import Any

from eventstore.domain.errors import StorageUnavailable
from eventstore.domain.schemas import (
    Compatibility,
    SchemaFormat,
    SchemaLimits,
    SchemaVersion,
    parse_upcast,
)
from eventstore.ports import SchemaRegistry
from eventstore.storage.aio import execute, prepare
from eventstore.storage.connection import CassandraConnection

#: Stored upcasts were bounded when registered: read them back without today's limits.
_UNBOUNDED = SchemaLimits(max_upcast_operations=2**31, max_upcast_value_bytes=2**31)


class CassandraSchemaRegistry(SchemaRegistry):
    def __init__(self, connection: CassandraConnection) -> None:
        """Prepares its statements: blocking, so call it off the event loop."""
        self._session = connection.session
        settings = connection.settings
        ks = settings.keyspace
        self._write, self._read, self._serial = connection.levels
        self._insert = prepare(
            self._session,
            f"INSERT INTO {ks}.event_schemas (aggregate_type, event_type, version, format, "
            "document, message_name, compatibility, upcast, registered_at, registered_by) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS",
        )
        self._list_type = prepare(
            self._session,
            f"INSERT INTO {ks}.event_schema_types (aggregate_type, event_type) VALUES (?, ?)",
        )
        self._select = prepare(
            self._session,
            f"SELECT version, format, document, message_name, compatibility, upcast, "
            f"registered_at, registered_by FROM {ks}.event_schemas "
            "WHERE aggregate_type = ? AND event_type = ?",
        )
        self._select_types = prepare(
            self._session,
            f"SELECT event_type FROM {ks}.event_schema_types WHERE aggregate_type = ?",
        )

    @classmethod
    async def create(cls, connection: CassandraConnection) -> CassandraSchemaRegistry:
        return await asyncio.to_thread(cls, connection)

    async def add(self, schema: SchemaVersion) -> bool:
        # Listed first: a type whose registration then fails is listed with no versions (the
        # use case skips those), never a version left unlisted.
        listed = self._list_type.bind((schema.aggregate_type, schema.event_type))
        listed.consistency_level = self._write
        await execute(self._session, listed)
        bound = self._insert.bind(
            (
                schema.aggregate_type,
                schema.event_type,
                schema.version,
                schema.format.value,
                schema.document,
                schema.message_name,
                schema.compatibility.value,
                json.dumps([op.to_json() for op in schema.upcast]),
                schema.registered_at,
                schema.registered_by,
            )
        )
        bound.consistency_level = self._write
        bound.serial_consistency_level = self._serial
        rows = await execute(self._session, bound)
        return bool(rows and rows[0]["[applied]"])

    async def versions(self, aggregate_type: str, event_type: str) -> list[SchemaVersion]:
        bound = self._select.bind((aggregate_type, event_type))
        bound.consistency_level = self._read
        rows = await execute(self._session, bound)
        return [_version(aggregate_type, event_type, row) for row in rows]

    async def event_types(self, aggregate_type: str) -> list[str]:
        bound = self._select_types.bind((aggregate_type,))
        bound.consistency_level = self._read
        rows = await execute(self._session, bound)
        return sorted(row["event_type"] for row in rows)


def _version(aggregate_type: str, event_type: str, row: dict[str, Any]) -> SchemaVersion:
    try:
        upcast = parse_upcast(json.loads(row["upcast"] or "[]"), _UNBOUNDED)
        registered_at = row["registered_at"]
        return SchemaVersion(
            aggregate_type=aggregate_type,
            event_type=event_type,
            version=row["version"],
            format=SchemaFormat(row["format"]),
            document=row["document"] or b"",
            compatibility=Compatibility(row["compatibility"]),
            message_name=row["message_name"] or "",
            upcast=upcast,
            registered_at=(
                registered_at.replace(tzinfo=UTC)
                if registered_at is not None and registered_at.tzinfo is None
                else registered_at
            ),
            registered_by=row["registered_by"] or "",
        )
    except ValueError as exc:  # a format or mode this release does not know (a newer one's)
        raise StorageUnavailable(f"schema row of {aggregate_type}/{event_type}: {exc}") from exc
