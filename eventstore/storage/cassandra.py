"""EventStorage on Apache Cassandra with lightweight transactions (see schema.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import structlog
from cassandra import (
    WriteTimeout,
)
from cassandra.query import UNSET_VALUE, BatchStatement, BatchType, PreparedStatement

from eventstore import tracing
from eventstore.config import CassandraSettings
from eventstore.domain.errors import StorageUnavailable
from eventstore.domain.events import AggregateInfo, Direction, NewEvent, RecordedEvent
from eventstore.ports import (
    AppendOutcome,
    Committed,
    EventStorage,
    ExistingEvent,
    Rejected,
    StreamState,
)
from eventstore.storage.aio import DRIVER_ERRORS, execute, prepare, translated, wrap
from eventstore.storage.connection import CassandraConnection
from eventstore.storage.schema import cql, keyspace_cql, table_cql

log = structlog.get_logger(__name__)

#: A test can arm this to fail the CAS write the way a real coordinator timeout does, either
#: before the batch is sent ("before_cas": not applied) or after Cassandra applied it
#: ("after_cas": applied, but the client never heard), and to fail the resolving read
#: ("before_resolve"). Called with the stage name; may raise. None in production.
FaultHook = Callable[[str], Awaitable[None]]


def _head(rows: list[Any]) -> StreamState:
    if not rows or rows[0]["head"] is None:
        return StreamState(0, None)
    return StreamState(rows[0]["head"], rows[0]["aggregate_type"])


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class CassandraEventStorage(EventStorage):
    def __init__(self, connection: CassandraConnection) -> None:
        """Prepares every statement: blocking, so call it off the event loop."""
        self._connection = connection
        self._owns_connection = False
        session = self._session = connection.session
        settings = connection.settings
        self._write, self._read, self._serial = connection.levels
        self.fault_hook: FaultHook | None = None
        statements = cql(settings.keyspace)
        self._advance = prepare(session, statements.advance_head)
        self._create = prepare(session, statements.create_head)
        self._insert_event = prepare(session, statements.insert_event)
        self._insert_event_id = prepare(session, statements.insert_event_id)
        self._select_head = prepare(session, statements.select_head)
        self._select_event_ids = prepare(session, statements.select_event_ids)
        self._describe = prepare(session, statements.describe)
        self._read_forwards = prepare(session, statements.read_forwards)
        self._read_backwards = prepare(session, statements.read_backwards)
        self._read_backwards_from_end = prepare(session, statements.read_backwards_from_end)
        # Span attributes, built once (OpenTelemetry's database conventions).
        self._traced = {
            operation: {
                "db.system.name": "cassandra",
                "db.namespace": settings.keyspace,
                "db.collection.name": "events",
                "db.operation.name": operation,
            }
            for operation in ("BATCH", "SELECT")
        }

    def _span(self, operation: str) -> AbstractContextManager[tracing.Span]:
        return tracing.span(f"{operation} events", tracing.SpanKind.CLIENT, self._traced[operation])

    # --- construction ------------------------------------------------------------------

    @classmethod
    async def connect(cls, settings: CassandraSettings) -> CassandraEventStorage:
        """Connect (owning the connection) and prepare every statement."""
        connection = await CassandraConnection.open(settings)
        try:
            storage = await asyncio.to_thread(cls, connection)
        except Exception:
            await connection.close()
            raise
        storage._owns_connection = True
        return storage

    @property
    def connection(self) -> CassandraConnection:
        return self._connection

    async def close(self) -> None:
        if self._owns_connection:
            await self._connection.close()

    # --- execution ---------------------------------------------------------------------

    async def _run(self, statement: Any, params: Sequence[Any] | None = None) -> list[Any]:
        return await execute(self._session, statement, params)

    def _bound(self, prepared: PreparedStatement, params: Sequence[Any]) -> Any:
        bound = prepared.bind(params)
        bound.consistency_level = self._read
        return bound

    # --- EventStorage ------------------------------------------------------------------

    async def stream_state(self, aggregate_id: str) -> StreamState:
        with self._span("SELECT"):
            return _head(await self._run(self._bound(self._select_head, (aggregate_id,))))

    async def settled_state(self, aggregate_id: str) -> StreamState:
        """At SERIAL: a Paxos round that completes an accepted-but-uncommitted append (or, with
        its newer ballot, stops it from ever committing), as `_resolve_unknown` relies on."""
        with self._span("SELECT"):
            return _head(await self._run(self._serial_read(self._select_head, (aggregate_id,))))

    async def append(
        self,
        aggregate_id: str,
        aggregate_type: str,
        expected_version: int,
        events: Sequence[NewEvent],
        recorded_at: datetime,
    ) -> AppendOutcome:
        last = expected_version + len(events)
        batch = BatchStatement(
            batch_type=BatchType.UNLOGGED,  # one partition: atomic and isolated without a log
            consistency_level=self._write,
            serial_consistency_level=self._serial,
        )
        if expected_version == 0:
            batch.add(self._create, (last, aggregate_type, recorded_at, recorded_at, aggregate_id))
        else:
            batch.add(
                self._advance, (last, recorded_at, aggregate_id, expected_version, aggregate_type)
            )
        for offset, event in enumerate(events, start=1):
            version = expected_version + offset
            batch.add(
                self._insert_event,
                (
                    aggregate_id,
                    version,
                    event.event_id,
                    event.event_type,
                    event.content_type,
                    event.data,
                    # Binding null to a collection writes a tombstone; unset writes nothing.
                    dict(event.metadata) or UNSET_VALUE,
                    recorded_at,
                ),
            )
            batch.add(self._insert_event_id, (aggregate_id, event.event_id, version, recorded_at))
        with self._span("BATCH") as span:
            if span.is_recording():
                span.set_attribute("db.operation.batch.size", len(batch))
            try:
                rows = await self._cas(batch)
            except WriteTimeout as exc:
                # Whatever phase timed out (Paxos or its commit), the batch may have applied.
                log.warning(
                    "append outcome unknown after a CAS write timeout; resolving with a SERIAL "
                    "read",
                    aggregate_id=aggregate_id,
                    expected_version=expected_version,
                    write_type=exc.write_type,
                )
                span.add_event("outcome unknown: resolving with a SERIAL read")
                outcome = await self._resolve_unknown(aggregate_id, expected_version, events)
            else:
                outcome = (
                    Committed(expected_version + 1, last, recorded_at)
                    if rows and rows[0]["[applied]"]
                    else self._rejected(rows)
                )
            if span.is_recording():
                span.set_attribute("eventstore.applied", isinstance(outcome, Committed))
            return outcome

    async def _cas(self, batch: BatchStatement) -> list[Any]:
        if self.fault_hook is not None:
            await self.fault_hook("before_cas")
        try:
            rows = await wrap(self._session.execute_async(batch))
        except WriteTimeout:
            raise
        except DRIVER_ERRORS as exc:
            # OperationTimedOut is the client giving up: the write may still apply. We cannot
            # resolve that here without risking a second timeout, so the caller gets a
            # retryable error, and the idempotent retry (same event ids) settles it.
            raise StorageUnavailable(f"Cassandra: {type(exc).__name__}") from exc
        if self.fault_hook is not None:
            await self.fault_hook("after_cas")
        return rows

    @staticmethod
    def _rejected(rows: list[Any]) -> Rejected:
        # A failed condition returns the rows it checked: the partition's static columns (head,
        # type) and, for each of our event ids already present, its id row.
        # An absent partition yields a row with nothing but [applied].
        if not rows:
            return Rejected(0, None)
        head = rows[0].get("head") or 0
        existing = {
            row["event_id"]: ExistingEvent(row["committed_version"], _utc(row["recorded_at"]))
            for row in rows
            if row.get("committed_version") is not None
        }
        return Rejected(head, rows[0]["aggregate_type"] if head else None, existing)

    async def _resolve_unknown(
        self, aggregate_id: str, expected_version: int, events: Sequence[NewEvent]
    ) -> AppendOutcome:
        """Settle a CAS whose outcome the coordinator left unknown.

        A read at SERIAL consistency runs a Paxos round on the partition: it completes any
        accepted-but-uncommitted proposal (so our batch, if a quorum accepted it, is committed
        now) and its newer ballot stops an unaccepted one from ever committing later. After it
        the outcome is fixed, and our event-id rows say which it is. If this read fails too,
        the client gets UNAVAILABLE and its idempotent retry settles the matter.
        """
        ids = [event.event_id for event in events]
        with translated("Cassandra: append outcome unknown; retry it"):
            if self.fault_hook is not None:
                await self.fault_hook("before_resolve")
            rows = await wrap(
                self._session.execute_async(
                    self._serial_read(self._select_event_ids, (aggregate_id, ids))
                )
            )
            state_rows = await wrap(
                self._session.execute_async(self._serial_read(self._select_head, (aggregate_id,)))
            )
        found = {
            row["event_id"]: ExistingEvent(row["committed_version"], _utc(row["recorded_at"]))
            for row in rows
        }
        versions = [found[i].version for i in ids if i in found]
        expected_versions = list(range(expected_version + 1, expected_version + len(ids) + 1))
        if versions == expected_versions:
            log.info("unknown append outcome resolved: applied", aggregate_id=aggregate_id)
            return Committed(expected_version + 1, versions[-1], found[ids[0]].recorded_at)
        log.info("unknown append outcome resolved: not applied", aggregate_id=aggregate_id)
        head = state_rows[0]["head"] if state_rows and state_rows[0]["head"] is not None else 0
        return Rejected(head, state_rows[0]["aggregate_type"] if head else None, found)

    def _serial_read(self, prepared: PreparedStatement, params: Sequence[Any]) -> Any:
        bound = prepared.bind(params)
        bound.consistency_level = self._serial
        return bound

    async def read(
        self, aggregate_id: str, start: int | None, direction: Direction, limit: int
    ) -> list[RecordedEvent]:
        if direction is Direction.FORWARDS:
            statement = self._bound(self._read_forwards, (aggregate_id, start or 1, limit))
        elif start is None:
            statement = self._bound(self._read_backwards_from_end, (aggregate_id, limit))
        else:
            statement = self._bound(self._read_backwards, (aggregate_id, start, limit))
        with self._span("SELECT"):
            rows = await self._run(statement)
        return [
            RecordedEvent(
                event_id=row["event_id"],
                aggregate_id=aggregate_id,
                aggregate_type=row["aggregate_type"],
                version=row["version"],
                event_type=row["event_type"],
                data=row["data"] or b"",
                content_type=row["content_type"],
                metadata=dict(row["metadata"]) if row["metadata"] else {},
                recorded_at=_utc(row["recorded_at"]),
            )
            for row in rows
        ]

    async def describe(self, aggregate_id: str) -> AggregateInfo | None:
        with self._span("SELECT"):
            rows = await self._run(self._bound(self._describe, (aggregate_id,)))
        if not rows or not rows[0]["head"]:
            return None
        row = rows[0]
        return AggregateInfo(
            aggregate_id=aggregate_id,
            aggregate_type=row["aggregate_type"],
            version=row["head"],
            first_recorded_at=_utc(row["created_at"]),
            last_recorded_at=_utc(row["updated_at"]),
        )


def schema_cql(settings: CassandraSettings) -> list[str]:
    """Every statement that creates the keyspace and its tables (each idempotent)."""
    return [
        keyspace_cql(
            settings.keyspace,
            settings.replication_strategy,
            settings.replication_factor,
            settings.local_datacenter,
        ),
        *table_cql(settings.keyspace),
    ]


async def apply_schema(settings: CassandraSettings) -> None:
    """Create the keyspace and tables if they are missing (idempotent)."""
    connection = await CassandraConnection.open(settings)
    statements = schema_cql(settings)
    try:
        with translated(f"cannot apply the schema at {settings.hosts}"):
            for statement in statements:
                await wrap(connection.session.execute_async(statement, timeout=60))
    finally:
        await connection.close()
