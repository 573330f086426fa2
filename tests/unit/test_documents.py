"""Event → OpenSearch document, without any service: every accepted event becomes a document
OpenSearch can take (terms within Lucene's limit, finite numbers, bounded depth and size), and
the document says what it changed or left out (invariant 11)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from eventstore.domain.events import RecordedEvent
from eventstore.search.documents import (
    EXACT_METADATA_FIELD,
    INCOMPLETE_KEY,
    MAX_DEPTH,
    MAX_NOTES,
    MAX_TERM_BYTES,
    NOTES_FIELD,
    Form,
    build_document,
    document_id,
    from_document,
    index_mappings,
    to_document,
)


def event(
    data: bytes = b'{"n": 1}',
    metadata: Mapping[str, str] | None = None,
    content_type: str = "application/json",
) -> RecordedEvent:
    return RecordedEvent(
        event_id=uuid.uuid4(),
        aggregate_id="order-1",
        aggregate_type="Order",
        version=3,
        event_type="OrderPlaced",
        data=data,
        content_type=content_type,
        metadata=dict(metadata or {}),
        recorded_at=datetime(2026, 11, 27, 12, 0, 0, 123000, tzinfo=UTC),
    )


def leaves(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every (path, leaf) of a flat_object value, as OpenSearch walks it."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, f"{path}.{key}")
    elif isinstance(value, list):
        for item in value:
            yield from leaves(item, path)
    else:
        yield path, value


def longest_term(document: Mapping[str, Any]) -> int:
    """The longest term OpenSearch 2.19 writes for the flat_object fields: the doc value
    "<field>.<field>.<path>=<value>" (measured against the real node; see documents.py)."""
    longest = 0
    for field in ("data", "metadata"):
        for path, leaf in leaves(document.get(field, {}), field):
            text = leaf if isinstance(leaf, str) else json.dumps(leaf)
            longest = max(longest, len(f"{field}.{path}={text}".encode()))
    return longest


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def test_an_ordinary_event_is_indexed_whole_and_comes_back_exactly() -> None:
    original = event(b'{"total": 12.5, "lines": [{"sku": "a"}]}', {"trace": "t-1"})
    document = to_document(original)
    assert document["data"] == {"total": 12.5, "lines": [{"sku": "a"}]}
    assert document["metadata"] == {"trace": "t-1"}
    assert base64.b64decode(document["payload"]) == original.data
    assert NOTES_FIELD not in document
    assert EXACT_METADATA_FIELD not in document
    assert from_document(document) == original


def test_numbers_keep_their_literal_text() -> None:
    # flat_object indexes a number as the keyword of its text, as it would a string: "1.50"
    # stays "1.50" (not 1.5), and what a double cannot hold becomes text instead of Infinity.
    digits = "9" * 500
    data = (
        f'{{"big": 1e400, "neg": -1e999, "plain": 1.5, "kept": 1.50, "int": 7, "huge": {digits}}}'
    )
    document, encoded = build_document(event(data.encode()))
    assert document["data"] == {
        "big": "1e400",
        "neg": "-1e999",
        "plain": 1.5,
        "kept": "1.50",
        "int": 7,
        "huge": digits,
    }
    assert b"Infinity" not in encoded
    json.loads(encoded)  # strict JSON
    notes = document[NOTES_FIELD]
    assert any(n.startswith("data.big: number 1e400 kept as text") for n in notes)
    assert any(n.startswith("data.neg: number") for n in notes)
    assert any(n.startswith("data.huge: number kept as text") for n in notes)
    assert not any(n.startswith(("data.kept", "data.plain", "data.int")) for n in notes)
    assert from_document(document).data == data.encode()


def test_a_string_too_long_for_a_term_is_shortened_at_a_character_boundary() -> None:
    text = "é" * 30_000  # 60,000 bytes of UTF-8
    document = to_document(event(json.dumps({"note": {"long": text}}).encode()))
    kept = document["data"]["note"]["long"]
    assert text.startswith(kept)
    assert longest_term(document) <= MAX_TERM_BYTES
    assert longest_term(document) > MAX_TERM_BYTES - 2  # as much as fits
    assert document[NOTES_FIELD] == [
        f"data.note.long: shortened to {len(kept.encode())} of 60000 bytes "
        f"(an index term holds at most {MAX_TERM_BYTES})"
    ]


def test_a_long_metadata_value_is_shortened_for_search_and_kept_exactly() -> None:
    metadata = {"trace": "x" * 40_000, "tenant": "acme"}
    original = event(metadata=metadata)
    document = to_document(original)
    assert document["metadata"]["tenant"] == "acme"
    assert len(document["metadata"]["trace"]) < 32_766
    assert longest_term(document) <= MAX_TERM_BYTES
    assert document[EXACT_METADATA_FIELD] == metadata
    assert [n.split(":")[0] for n in document[NOTES_FIELD]] == ["metadata.trace"]
    assert from_document(document) == original  # queries return the exact metadata


def test_a_leaf_under_a_key_too_long_for_a_term_is_left_out() -> None:
    key = "k" * 33_000
    document = to_document(event(json.dumps({key: 1, "ok": 2}).encode()))
    assert document["data"] == {"ok": 2}
    (note,) = document[NOTES_FIELD]
    assert note.startswith("data." + "k" * 95)
    assert "left out (key over" in note
    assert len(note) <= 300


def test_deep_nesting_is_cut_at_the_depth_limit() -> None:
    # OpenSearch's flat_object parser recurses per level; a deep enough document kills the node.
    deep: Any = "bottom"
    for _ in range(60):
        deep = {"a": deep}
    document = to_document(event(json.dumps({"deep": deep, "flat": 1}).encode()))
    assert depth(document["data"]) <= MAX_DEPTH + 1
    assert document["data"]["flat"] == 1
    (note,) = document[NOTES_FIELD]
    assert note.startswith("data.deep.a.a")
    assert f"nested deeper than {MAX_DEPTH}" in note


def test_nesting_too_deep_to_parse_leaves_data_out() -> None:
    data = b"[" * 100_000 + b"]" * 100_000
    document = to_document(event(data))
    assert "data" not in document
    assert document[NOTES_FIELD] == ["data: left out (nested too deeply to parse)"]
    assert from_document(document).data == data


def test_data_that_is_not_json_is_stored_but_not_searchable() -> None:
    document = to_document(event(b"{not json"))
    assert "data" not in document
    assert document[NOTES_FIELD] == ["data: left out (not JSON: JSONDecodeError)"]
    binary = to_document(event(b"\xff\x00", content_type="application/octet-stream"))
    assert "data" not in binary
    assert NOTES_FIELD not in binary


def test_lone_surrogates_are_replaced_so_the_document_is_valid_utf8() -> None:
    document, encoded = build_document(event(b'{"s": "a\\ud800b", "\\udfff": 1}'))
    encoded.decode("utf-8")  # strict
    assert document["data"]["s"] == "a\ufffdb"
    assert any("U+FFFD" in n for n in document[NOTES_FIELD])


def test_a_scalar_top_level_value_is_wrapped() -> None:
    assert to_document(event(b"[1, 2]"))["data"] == {"value": [1, 2]}
    assert to_document(event(b'"text"'))["data"] == {"value": "text"}


def test_notes_are_bounded() -> None:
    data = json.dumps({f"k{i}": "v" * 40_000 for i in range(50)}).encode()
    document, _ = build_document(event(data), max_bytes=16 * 1024 * 1024)
    notes = document[NOTES_FIELD]
    assert len(notes) == MAX_NOTES + 1
    assert notes[-1] == f"…: {50 - MAX_NOTES} more changes not listed"
    # Under the default cap the searchable copy goes: its notes with it, and that is said.
    assert to_document(event(data))[NOTES_FIELD] == [
        "data: not searchable (document over 4194304 bytes)"
    ]


def test_over_the_size_cap_searchable_copies_go_first_then_the_payload() -> None:
    original = event(json.dumps({"k": ["v" * 1000] * 300}).encode(), {"m": "x" * 1000})
    document, encoded = build_document(original, max_bytes=500_000)
    assert "data" not in document
    assert "payload" in document
    assert "metadata" in document
    assert len(encoded) <= 500_000
    assert document[NOTES_FIELD] == ["data: not searchable (document over 500000 bytes)"]
    assert from_document(document) == original

    document, encoded = build_document(original, max_bytes=100_000)
    assert len(encoded) <= 100_000
    assert "payload" not in document
    assert "data" not in document
    assert document["metadata"] == {"m": "x" * 1000}
    assert "payload: left out (document over 100000 bytes)" in document[NOTES_FIELD]
    returned = from_document(document)
    assert returned.data == b""
    assert returned.metadata["m"] == "x" * 1000
    assert returned.metadata[INCOMPLETE_KEY].startswith(
        "payload: left out (document over 100000 bytes) — read the event from the store"
    )


def test_reduced_forms() -> None:
    original = event(b'{"n": 1}', {"trace": "t"})
    stored, _ = build_document(original, Form.STORED, "refused by OpenSearch: x")
    assert "data" not in stored
    assert "metadata" not in stored
    assert stored[EXACT_METADATA_FIELD] == {"trace": "t"}
    assert stored[NOTES_FIELD] == [
        "data: not searchable (refused by OpenSearch: x)",
        "metadata: not searchable (refused by OpenSearch: x)",
    ]
    assert from_document(stored) == original

    minimal, _ = build_document(original, Form.MINIMAL, "too large")
    assert set(minimal) == {
        "event_id",
        "aggregate_id",
        "aggregate_type",
        "event_type",
        "version",
        "recorded_at",
        "content_type",
        NOTES_FIELD,
    }
    assert minimal[NOTES_FIELD] == [
        "payload: left out (too large)",
        "metadata: left out (too large)",
    ]
    returned = from_document(minimal)
    assert (returned.event_id, returned.version, returned.event_type) == (
        original.event_id,
        3,
        "OrderPlaced",
    )
    assert set(returned.metadata) == {INCOMPLETE_KEY}
    assert "metadata: left out (too large)" in returned.metadata[INCOMPLETE_KEY]


def test_every_field_a_document_may_have_is_mapped() -> None:
    mapped = set(index_mappings()["properties"])
    original = event(b'{"a": "' + b"x" * 40_000 + b'"}', {"m": "y" * 40_000})
    for form in Form:
        document, _ = build_document(original, form, "why")
        assert set(document) <= mapped, set(document) - mapped


def test_documents_of_earlier_template_versions_still_read() -> None:
    original = event(b'{"n": 1}', {"trace": "t"})
    old = {
        "event_id": str(original.event_id),
        "aggregate_id": "order-1",
        "aggregate_type": "Order",
        "event_type": "OrderPlaced",
        "version": 3,
        "recorded_at": "2026-11-27T12:00:00.123+00:00",
        "content_type": "application/json",
        "metadata": {"trace": "t"},
        "payload": base64.b64encode(b'{"n": 1}').decode(),
        "data": {"n": 1},
    }
    assert from_document(old) == original


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=60,
)


@given(
    value=json_values,
    wrap=st.integers(min_value=0, max_value=40),
    long_text=st.text(min_size=0, max_size=3).map(lambda s: s * 12_000),
)
def test_any_json_becomes_an_acceptable_document(value: Any, wrap: int, long_text: str) -> None:
    for _ in range(wrap):
        value = {"w": value}
    data = json.dumps({"v": value, "long": long_text}).encode()
    document, encoded = build_document(event(data, {"m": long_text}))
    assert json.loads(encoded) == document
    assert longest_term(document) <= MAX_TERM_BYTES
    assert depth(document.get("data")) <= MAX_DEPTH + 1
    assert from_document(document).data == data


# Few characters and small versions, so that pairs which would run together in a naive
# encoding ("a1", 2) / ("a", 12) / ("a:1", 2) come up often.
stored_events = st.tuples(st.text("a1:", min_size=1, max_size=4), st.integers(1, 120))


@given(first=stored_events, second=stored_events)
def test_two_stored_events_never_share_a_document_id(
    first: tuple[str, int], second: tuple[str, int]
) -> None:
    assert (document_id(*first) == document_id(*second)) == (first == second)


def test_a_document_id_fits_opensearch_whatever_the_aggregate_id() -> None:
    assert len(document_id("a" * 100_000, 2**63 - 1).encode()) <= 512
    assert document_id("\ud800", 1) != document_id("\ufffd", 1)  # never fails on any str
