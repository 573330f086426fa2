"""Invariant 6: no RPC and no code path updates or deletes an event."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from eventstore.storage.schema import cql
from eventstore.v1 import eventstore_pb2

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [
    p
    for package in ("eventstore", "indexer", "replayer")
    for p in (ROOT / package).rglob("*.py")
    if "v1" not in p.relative_to(ROOT).parts
]
STATIC_COLUMNS = {"head", "aggregate_type", "created_at", "updated_at"}


def test_the_api_has_no_update_or_delete() -> None:
    methods = eventstore_pb2.DESCRIPTOR.services_by_name["EventStore"].methods_by_name
    assert not [m for m in methods if re.match(r"(Update|Delete|Remove|Replace|Truncate)", m)]


def test_no_code_deletes_or_truncates_events() -> None:
    # Bookkeeping tables (outbox markers) may delete their own rows; the events table never.
    forbidden = re.compile(
        r"\b(DELETE\s+FROM\s+\S*\bevents\b|DELETE\s+\w+.*FROM\s+\S*\bevents\b|TRUNCATE|DROP\s+TABLE)",
        re.I,
    )
    for path in SOURCES:
        assert not forbidden.search(path.read_text()), path


def test_every_write_is_an_insert_or_a_conditional_head_update() -> None:
    statements = dataclasses.asdict(cql("ks"))
    writes = {n: s for n, s in statements.items() if not s.startswith("SELECT")}
    assert set(writes) == {"advance_head", "create_head", "insert_event", "insert_event_id"}
    for name in ("advance_head", "create_head"):
        assigned = re.search(r"SET (.*) WHERE", writes[name])
        assert assigned is not None
        columns = {part.split("=")[0].strip() for part in assigned.group(1).split(",")}
        assert columns <= STATIC_COLUMNS, "an UPDATE may only move the stream head"
        assert " IF head = " in writes[name], "every head update is conditional"
    assert writes["insert_event_id"].endswith("IF NOT EXISTS")


def test_event_rows_are_written_only_in_the_conditional_batch() -> None:
    adapter = (ROOT / "eventstore" / "storage" / "cassandra.py").read_text()
    assert adapter.count("self._insert_event,") == 1
    batch_code = adapter[adapter.index("async def append(") : adapter.index("async def _cas(")]
    assert "self._insert_event," in batch_code
    assert "self._create" in batch_code
    assert "self._advance" in batch_code
