"""Aggregates whose publication keeps failing, as the relay parked them (eventstore-replay
parked): read from Cassandra directly."""

from __future__ import annotations

import json
from typing import Any

from eventstore.config import CassandraSettings
from eventstore.ports import ParkedAggregate
from eventstore.storage.connection import CassandraConnection
from eventstore.storage.outbox import CassandraPublicationLog
from replayer.verify import setup_errors


async def parked(cassandra: CassandraSettings) -> list[ParkedAggregate]:
    """Every parked aggregate, by aggregate id."""
    connection = await CassandraConnection.open(cassandra)
    try:
        with setup_errors(cassandra.keyspace):
            log = await CassandraPublicationLog.create(connection)
        return sorted(await log.parked(), key=lambda p: p.aggregate_id)
    finally:
        await connection.close()


def as_dict(entry: ParkedAggregate) -> dict[str, Any]:
    return {
        "aggregate_id": entry.aggregate_id,
        "reason": entry.reason,
        "since": entry.since.isoformat(),
        "attempts": entry.attempts,
        "next_attempt_at": entry.next_attempt_at.isoformat(),
    }


def render(entries: list[ParkedAggregate], as_json: bool) -> str:
    if as_json:
        return json.dumps([as_dict(e) for e in entries], indent=2) + "\n"
    if not entries:
        return "no parked aggregates\n"
    lines = [f"{len(entries)} parked aggregate{'' if len(entries) == 1 else 's'}:"]
    for entry in entries:
        lines.append(
            f"  {entry.aggregate_id}: {entry.attempts} attempts since "
            f"{entry.since.isoformat(timespec='seconds')}, next at "
            f"{entry.next_attempt_at.isoformat(timespec='seconds')}: {entry.reason}"
        )
    return "\n".join(lines) + "\n"
