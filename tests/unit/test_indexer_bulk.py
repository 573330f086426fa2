"""The indexer's bulk writing, without any service: against a fake bulk endpoint that behaves
like OpenSearch's (413 over a content length, whole-request 429, per-item refusals), no
document wedges a batch and none is dead-lettered while a reduced form can be indexed."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from opensearchpy.exceptions import ConnectionError as OpenSearchConnectionError
from opensearchpy.exceptions import TransportError

from eventstore.domain.events import RecordedEvent
from eventstore.search.documents import NOTES_FIELD, Form, document_id
from indexer.bulk import BulkWriter, Item, chunks, make_item

MAX_DOCUMENT = 4 * 1024 * 1024


def item(data_bytes: int = 100, position: int = 0) -> Item:
    """An event of about `data_bytes` of incompressible JSON (its document: about 2.4 times
    that, with the base64 payload beside the searchable copy)."""
    blob = os.urandom(data_bytes // 2 + 1).hex()[:data_bytes]
    event = RecordedEvent(
        event_id=uuid.uuid4(),
        aggregate_id=f"agg-{position}",
        aggregate_type="Big",
        version=1,
        event_type="Happened",
        data=json.dumps({"blob": blob, "i": position}).encode(),
        content_type="application/json",
        metadata={"trace": "t"},
        recorded_at=datetime(2026, 11, 27, tzinfo=UTC),
    )
    return make_item(f"message-{position}", event, "events-2026.11", MAX_DOCUMENT)


Refuse = Callable[[dict[str, Any]], str | None]


class FakeBulk:
    """OpenSearch's bulk endpoint, as far as the writer can tell."""

    def __init__(
        self,
        max_content: int | None = None,
        refuse: Refuse = lambda _doc: None,
        failures: list[Exception] | None = None,
        busy_items: int = 0,
    ) -> None:
        self.max_content = max_content
        self.refuse = refuse
        self.failures = failures or []
        self.busy_items = busy_items
        self.requests: list[int] = []
        self.indexed: dict[str, dict[str, Any]] = {}

    def __call__(self, body: bytes) -> dict[str, Any]:
        self.requests.append(len(body))
        if self.failures:
            raise self.failures.pop(0)
        if self.max_content is not None and len(body) > self.max_content:
            raise TransportError(413, "", "")
        lines = body.splitlines()
        items = []
        for action, line in zip(lines[::2], lines[1::2], strict=True):
            _id = json.loads(action)["index"]["_id"]
            document = json.loads(line)
            problem = self.refuse(document)
            if self.busy_items:
                self.busy_items -= 1
                items.append({"index": {"_id": _id, "status": 429, "error": {"type": "busy"}}})
            elif problem:
                error = {"type": "mapper_parsing_exception", "reason": problem}
                items.append({"index": {"_id": _id, "status": 400, "error": error}})
            else:
                self.indexed[_id] = document
                items.append({"index": {"_id": _id, "status": 201}})
        return {"errors": len(self.indexed) < len(items), "items": items}


class Waits:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, backoff: float) -> float:
        self.calls.append(backoff)
        return backoff * 2


def indexed_as(item: Item) -> str:
    return document_id(item.event.aggregate_id, item.event.version)


def writer(bulk: FakeBulk, waits: Waits, max_bulk_bytes: int) -> BulkWriter:
    return BulkWriter(bulk, waits, max_bulk_bytes, MAX_DOCUMENT)


def test_chunks_are_bounded_by_bytes_and_keep_the_order() -> None:
    items = [item(10_000, i) for i in range(20)]
    bound = 3 * items[0].size + 100
    groups = list(chunks(items, bound))
    assert [i for g in groups for i in g] == items
    assert all(sum(i.size for i in g) <= bound for g in groups)
    assert [len(g) for g in groups] == [3, 3, 3, 3, 3, 3, 2]
    big = item(30_000)
    assert [len(g) for g in chunks([items[0], big, items[1]], big.size - 1)] == [1, 1, 1]


def test_requests_are_bounded_by_bytes_up_front() -> None:
    bulk, waits = FakeBulk(max_content=100_000), Waits()
    items = [item(20_000, i) for i in range(30)]
    assert writer(bulk, waits, 60_000).write(items) == []
    assert len(bulk.indexed) == 30
    assert max(bulk.requests) <= 60_000
    assert waits.calls == []


def test_a_request_refused_as_too_large_is_split_until_it_fits() -> None:
    items = [item(20_000, i) for i in range(16)]
    bulk, waits = FakeBulk(max_content=items[0].size + 1_000), Waits()
    assert writer(bulk, waits, 10**9).write(items) == []
    assert len(bulk.indexed) == 16
    # One request of 16, refused; halves of 8, 4, 2, refused; then 16 of one document each.
    assert len(bulk.requests) == 15 + 16
    assert waits.calls == []  # a 413 is not a reason to wait
    assert not any(NOTES_FIELD in d for d in bulk.indexed.values())


def test_a_single_document_too_large_is_indexed_in_the_minimal_form() -> None:
    bulk, waits = FakeBulk(max_content=50_000), Waits()
    big, small = item(200_000, 1), item(1_000, 2)
    assert writer(bulk, waits, 10**9).write([big, small]) == []
    document = bulk.indexed[indexed_as(big)]
    assert "payload" not in document
    assert "data" not in document
    assert document["event_type"] == "Happened"
    assert document[NOTES_FIELD][0].startswith("payload: left out (the document of ")
    assert "too large (HTTP 413)" in document[NOTES_FIELD][0]
    assert "payload" in bulk.indexed[indexed_as(small)]


def test_a_refused_document_steps_down_and_the_others_are_indexed_at_once() -> None:
    victim = item(1_000, 0)
    victim_id = str(victim.event.event_id)

    def refuse(document: dict[str, Any]) -> str | None:
        return "no data here" if document["event_id"] == victim_id and "data" in document else None

    bulk, waits = FakeBulk(refuse=refuse), Waits()
    others = [item(1_000, i) for i in range(1, 10)]
    assert writer(bulk, waits, 10**9).write([victim, *others]) == []
    assert len(bulk.indexed) == 10
    stored = bulk.indexed[indexed_as(victim)]
    assert "payload" in stored
    assert "metadata_exact" in stored
    assert stored[NOTES_FIELD][0].startswith(
        "data: not searchable (refused by OpenSearch: mapper_parsing_exception: no data here"
    )
    assert len(bulk.requests) == 2  # the batch, then the one reduced document
    assert waits.calls == []


def test_only_a_refused_minimal_document_is_given_up() -> None:
    victim = item(1_000, 0)
    victim_id = str(victim.event.event_id)

    def refuse(document: dict[str, Any]) -> str | None:
        return "never" if document["event_id"] == victim_id else None

    bulk, waits = FakeBulk(refuse=refuse), Waits()
    refused = writer(bulk, waits, 10**9).write([victim, item(1_000, 1)])
    assert [(r.item.source, r.item.form) for r in refused] == [("message-0", Form.MINIMAL)]
    assert "never" in refused[0].reason
    assert len(bulk.requests) == 3  # full, stored, minimal
    assert len(bulk.indexed) == 1


def test_a_request_shed_whole_waits_and_is_split() -> None:
    shed = TransportError(429, "rejected_execution_exception", "indexing pressure")
    bulk, waits = FakeBulk(failures=[shed]), Waits()
    items = [item(1_000, i) for i in range(8)]
    assert writer(bulk, waits, 10**9).write(items) == []
    assert len(bulk.indexed) == 8
    assert len(waits.calls) == 1
    assert len(bulk.requests) == 3  # all, then two halves


def test_opensearch_down_retries_the_same_request_with_backoff() -> None:
    down = OpenSearchConnectionError("N/A", "connection refused", Exception())
    bulk, waits = FakeBulk(failures=[down, down, down]), Waits()
    items = [item(1_000, i) for i in range(8)]
    assert writer(bulk, waits, 10**9).write(items) == []
    assert len(bulk.indexed) == 8
    assert waits.calls == [0.1, 0.2, 0.4]
    assert len(set(bulk.requests)) == 1  # the same request each time


@pytest.mark.parametrize("busy", [1, 5])
def test_items_opensearch_is_too_busy_for_are_retried_after_a_wait(busy: int) -> None:
    bulk, waits = FakeBulk(busy_items=busy), Waits()
    items = [item(1_000, i) for i in range(8)]
    assert writer(bulk, waits, 10**9).write(items) == []
    assert len(bulk.indexed) == 8
    assert len(waits.calls) == 1
    assert not any(NOTES_FIELD in d for d in bulk.indexed.values())
