"""How an event becomes an OpenSearch document, and the index template that maps it.

Every event the store accepted becomes a document that is found by its ids, types and time
(invariant 11). What OpenSearch cannot hold is changed or left out, never the whole event, and
the document says so in `index_notes` (one entry per change: ``<field path>: <what> (<why>)``):

* `data` (the JSON body, for searching) and `metadata` are `flat_object` fields, which index
  every leaf as a keyword term of its text. A term longer than Lucene's limit (32,766 bytes of
  UTF-8, counted with its path: ``data.data.<path>=<value>`` as OpenSearch 2.19 writes it)
  makes OpenSearch refuse the whole document, so longer strings are shortened and leaves under
  too long a key are left out.
* JSON numbers keep their literal text: one a double cannot hold (``1e400``) or a very long one
  (Jackson refuses those) is stored as a string of the same text, which flat_object indexes as
  the same term a number would have given.
* Containers nested deeper than `MAX_DEPTH` are left out: flat_object parses recursively, and a
  deep enough document overflows the stack of the OpenSearch node and kills it.
* A document is at most `max_bytes` (serialized). Over it, the searchable copies go first
  (`data`, and `metadata` if the exact metadata is stored beside it), then the exact `payload`
  and metadata; the larger first, until the document fits.
* If OpenSearch still refuses a document for its content, the indexer retries it in a reduced
  form (`Form.STORED`: no searchable copies, the exact payload and metadata kept), then in the
  minimal form (`Form.MINIMAL`: ids, types, version, time, content type and the notes).

`payload` (binary, the exact data bytes) and `metadata_exact` (the exact metadata, present only
when the searchable `metadata` lost something) are stored, not indexed: a query returns the
event from them. When they are missing, `from_document` returns what the document has and adds
the metadata key `$index_incomplete` saying what is missing; the whole event is always readable
from the store by aggregate id and version.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import math
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from eventstore.config import OpenSearchSettings
from eventstore.domain.events import RecordedEvent
from eventstore.domain.tracecontext import trace_context_of
from eventstore.domain.validation import is_json_content_type

#: Bump when the mapping changes; recorded in the template's _meta. 3: trace_id, traceparent.
TEMPLATE_VERSION = 3

#: Lucene refuses a document holding a term longer than this (bytes of UTF-8).
MAX_TERM_BYTES = 32_766
#: Containers nested deeper than this are left out of the searchable copies. OpenSearch's
#: flat_object parser recurses per level: 1,100 levels killed a 2.19 node (StackOverflowError).
MAX_DEPTH = 20
#: Numbers with longer literals are kept as text (Jackson refuses numbers of 1,000+ characters).
MAX_NUMBER_CHARS = 100
#: Default cap of a serialized document (the indexer's EVENTSTORE_INDEXER_MAX_DOCUMENT_BYTES).
DEFAULT_MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
MAX_NOTES = 20
MAX_NOTE_CHARS = 300
#: Keyword terms longer than this are not indexed (notes are shorter; a guard, not a limit).
NOTE_IGNORE_ABOVE = 1024

NOTES_FIELD = "index_notes"
EXACT_METADATA_FIELD = "metadata_exact"
#: Metadata key a query adds to an event whose document lacks part of it.
INCOMPLETE_KEY = "$index_incomplete"

_ESSENTIALS = (
    "event_id",
    "aggregate_id",
    "aggregate_type",
    "event_type",
    "version",
    "recorded_at",
    "content_type",
)


class Form(enum.IntEnum):
    """How much of an event a document holds; the indexer steps down when OpenSearch refuses."""

    #: Everything: searchable data and metadata (made acceptable), exact payload and metadata.
    FULL = 0
    #: No searchable copies: the exact payload and metadata, stored but not indexed.
    STORED = 1
    #: Only ids, types, version, time, content type and the notes.
    MINIMAL = 2


def index_name(settings: OpenSearchSettings, recorded_at: datetime) -> str:
    """Monthly indices: an event's index follows from its own time, so a re-delivered event
    always lands on its earlier copy (same index, same _id) instead of beside it."""
    return f"{settings.index_prefix}-{recorded_at:%Y.%m}"


def document_id(aggregate_id: str, version: int) -> str:
    """The `_id` of the document of the event stored at (`aggregate_id`, `version`).

    Not the event id: clients choose those, unique only within an aggregate, so one principal
    could replace another's document by reusing its event id. A stored event is one
    (aggregate, version) pair; the aggregate id is length-prefixed so no two pairs encode
    alike, whatever characters ids hold, and hashed because an `_id` holds at most 512 bytes
    while aggregate ids may be longer (EVENTSTORE_LIMIT_MAX_AGGREGATE_ID_BYTES)."""
    encoded = aggregate_id.encode("utf-8", "surrogatepass")
    key = len(encoded).to_bytes(8, "big") + encoded + version.to_bytes(8, "big")
    return hashlib.sha256(key).hexdigest()


# --- notes ------------------------------------------------------------------------------


class _Notes:
    """What was changed or left out, as `index_notes` entries (bounded in number and size)."""

    def __init__(self) -> None:
        self._entries: list[tuple[str, str]] = []

    def add(self, path: str, what: str) -> None:
        self._entries.append((path, what))

    def touched(self, field: str) -> bool:
        return any(_within(path, field) for path, _ in self._entries)

    def forget(self, field: str) -> None:
        """Drop the notes on the leaves of `field` (it left the document)."""
        self._entries = [(p, w) for p, w in self._entries if not p.startswith(field + ".")]

    def result(self) -> list[str]:
        # Notes on whole fields first: those are never among the ones cut off.
        ordered = sorted(self._entries, key=lambda entry: "." in entry[0])
        shown = [_note(path, what) for path, what in ordered[:MAX_NOTES]]
        if len(ordered) > MAX_NOTES:
            shown.append(f"…: {len(ordered) - MAX_NOTES} more changes not listed")
        return shown


def _within(path: str, field: str) -> bool:
    return path == field or path.startswith(field + ".")


def _note(path: str, what: str) -> str:
    if len(path) > 120:
        path = path[:100] + "…"
    return f"{path}: {what}"[:MAX_NOTE_CHARS]


# --- searchable copies ------------------------------------------------------------------


class _NumberText(str):
    """A JSON number kept as its literal text."""

    __slots__ = ()


def _parse_int(text: str) -> int | str:
    if len(text) <= MAX_NUMBER_CHARS:
        value = int(text)
        if str(value) == text:
            return value
    return _NumberText(text)


def _parse_float(text: str) -> float | str:
    value = float(text)
    # Only when re-printing gives the same text: flat_object indexes the literal (1.50, 1E5).
    if math.isfinite(value) and len(text) <= MAX_NUMBER_CHARS and repr(value) == text:
        return value
    return _NumberText(text)


def _parse_constant(text: str) -> str:
    # NaN, Infinity, -Infinity: not JSON (the store refuses them), but never fail on them here.
    return _NumberText(text)


def parse_json(data: bytes) -> Any:
    """JSON as Python values with every number's literal text intact (non-finite and very long
    numbers become `str` of their text: OpenSearch refuses `Infinity` and 1,000-digit numbers).
    Raises ValueError (or RecursionError) when `data` is not JSON."""
    return json.loads(
        data, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant
    )


_OMIT = object()


def _clean_text(text: str) -> tuple[str, bytes, bool]:
    """The text as valid UTF-8 (a JSON escape can leave a lone surrogate, which cannot be sent)."""
    try:
        return text, text.encode(), False
    except UnicodeEncodeError:
        fixed = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)
        return fixed, fixed.encode(), True


def _leaf_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _searchable(value: Any, field: str, notes: _Notes) -> Any:
    """A copy of a JSON value that a flat_object field `field` accepts; changes are noted."""
    # The longest term of a leaf is the doc value of <field>._valueAndPath, which OpenSearch
    # 2.19 writes as "<field>.<field>.<path>=<value>" (measured: 5 bytes less for `data`).
    overhead = len(field.encode()) + 1 + 1

    def walk(value: Any, path: str, path_bytes: int, depth: int) -> Any:
        if isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                notes.add(path, f"left out (nested deeper than {MAX_DEPTH} levels)")
                return _OMIT
            if isinstance(value, list):
                kept = (walk(item, path, path_bytes, depth + 1) for item in value)
                return [item for item in kept if item is not _OMIT]
            result: dict[str, Any] = {}
            for key, item in value.items():
                key, encoded, fixed = _clean_text(key)
                child = f"{path}.{key}"
                child_bytes = path_bytes + 1 + len(encoded)
                if fixed:
                    notes.add(child, "key: invalid UTF-16 replaced by U+FFFD")
                if child_bytes + overhead >= MAX_TERM_BYTES:
                    notes.add(child, f"left out (key over {MAX_TERM_BYTES} bytes with its path)")
                    continue
                kept_item = walk(item, child, child_bytes, depth + 1)
                if kept_item is not _OMIT:
                    result[key] = kept_item
            return result
        if isinstance(value, _NumberText):
            if len(value) > MAX_NUMBER_CHARS:
                notes.add(path, f"number kept as text (over {MAX_NUMBER_CHARS} characters)")
            elif not math.isfinite(float(value)):
                notes.add(path, f"number {value[:40]} kept as text (beyond a double)")
            value = str(value)
        text, encoded, fixed = _clean_text(_leaf_text(value))
        if fixed:
            notes.add(path, "invalid UTF-16 replaced by U+FFFD")
            value = text
        budget = MAX_TERM_BYTES - path_bytes - overhead
        if len(encoded) <= budget:
            return value
        if not isinstance(value, str):
            notes.add(path, f"left out (over {MAX_TERM_BYTES} bytes with its path)")
            return _OMIT
        cut = encoded[:budget].decode(errors="ignore")  # whole characters only
        notes.add(
            path,
            f"shortened to {len(cut.encode())} of {len(encoded)} bytes "
            f"(an index term holds at most {MAX_TERM_BYTES})",
        )
        return cut

    return walk(value, field, len(field.encode()), 0)


def _searchable_data(event: RecordedEvent, notes: _Notes) -> dict[str, Any] | None:
    if not (is_json_content_type(event.content_type) and event.data):
        return None
    try:
        parsed = parse_json(event.data)
    except RecursionError:
        notes.add("data", "left out (nested too deeply to parse)")
        return None
    except (ValueError, UnicodeDecodeError) as exc:
        notes.add("data", f"left out (not JSON: {type(exc).__name__})")
        return None
    # flat_object wants an object at the top: wrap anything else.
    wrapped = parsed if isinstance(parsed, dict) else {"value": parsed}
    result = _searchable(wrapped, "data", notes)
    return None if result is _OMIT else result


# --- documents --------------------------------------------------------------------------


def encode_document(document: Mapping[str, Any]) -> bytes:
    """The document as OpenSearch gets it (compact UTF-8 JSON; never NaN or Infinity)."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _essentials(event: RecordedEvent) -> dict[str, Any]:
    essentials: dict[str, Any] = {
        "event_id": str(event.event_id),
        "aggregate_id": event.aggregate_id,
        "aggregate_type": event.aggregate_type,
        "event_type": event.event_type,
        "version": event.version,
        "recorded_at": event.recorded_at.isoformat(timespec="milliseconds"),
        "content_type": event.content_type,
    }
    if (trace := trace_context_of(event.metadata)) is not None:
        # In every form (a few dozen bytes): the trace id finds the events a trace appended.
        essentials["trace_id"] = trace.trace_id
        essentials["traceparent"] = trace.traceparent
    return essentials


def build_document(
    event: RecordedEvent,
    form: Form = Form.FULL,
    why: str = "",
    max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
) -> tuple[dict[str, Any], bytes]:
    """The document of `event` in `form` (`why`: the reason for a reduced form), and its
    serialization, at most `max_bytes` unless the essentials alone are larger."""
    document = _essentials(event)
    notes = _Notes()
    if form is Form.FULL:
        if event.metadata:
            document["metadata"] = _searchable(dict(event.metadata), "metadata", notes)
            if notes.touched("metadata"):
                document[EXACT_METADATA_FIELD] = dict(event.metadata)
        # The exact bytes, so a query returns what was appended; `data` is for searching.
        document["payload"] = base64.b64encode(event.data).decode()
        data = _searchable_data(event, notes)
        if data is not None:
            document["data"] = data
    elif form is Form.STORED:
        if event.metadata:
            document[EXACT_METADATA_FIELD] = dict(event.metadata)
        document["payload"] = base64.b64encode(event.data).decode()
        notes.add("data", f"not searchable ({why})")
        if event.metadata:
            notes.add("metadata", f"not searchable ({why})")
    else:
        notes.add("payload", f"left out ({why})")
        if event.metadata:
            notes.add("metadata", f"left out ({why})")
    if entries := notes.result():
        document[NOTES_FIELD] = entries
    encoded = encode_document(document)
    for part in _drop_order(document) if len(encoded) > max_bytes else ():
        del document[part]
        notes.forget(part)
        name = "metadata" if part == EXACT_METADATA_FIELD else part
        # A searchable copy whose exact counterpart stays is only no longer searchable.
        kept = part == "data" or (part == "metadata" and EXACT_METADATA_FIELD in document)
        done = "not searchable" if kept else "left out"
        notes.add(name, f"{done} (document over {max_bytes} bytes)")
        document[NOTES_FIELD] = notes.result()
        encoded = encode_document(document)
        if len(encoded) <= max_bytes:
            break
    return document, encoded


def _drop_order(document: Mapping[str, Any]) -> list[str]:
    """What leaves a document over its size cap: the searchable copies (their content is
    still in the exact ones), then the exact payload and metadata; the larger first."""
    exact_metadata = EXACT_METADATA_FIELD if EXACT_METADATA_FIELD in document else "metadata"
    searchable = [p for p in ("data", "metadata") if p != exact_metadata]
    exact = ["payload", exact_metadata]

    def size(part: str) -> int:
        return len(encode_document({part: document[part]})) if part in document else 0

    order: list[str] = []
    for tier in (searchable, exact):
        order += sorted((p for p in tier if p in document), key=size, reverse=True)
    return order


def to_document(
    event: RecordedEvent, max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES
) -> dict[str, Any]:
    """The full document of `event` (see the module docstring for what it may leave out)."""
    return build_document(event, Form.FULL, max_bytes=max_bytes)[0]


def missing_parts(source: Mapping[str, Any]) -> list[str]:
    """The notes of a document that say a query cannot return the whole event from it."""
    notes = [str(n) for n in source.get(NOTES_FIELD) or ()]
    missing = []
    if "payload" not in source:
        missing += [n for n in notes if n.startswith("payload:")] or ["payload: left out"]
    if EXACT_METADATA_FIELD not in source:
        missing += [n for n in notes if n.split(":", 1)[0].startswith("metadata")]
    return missing


def from_document(source: dict[str, Any]) -> RecordedEvent:
    """The event a document holds. If the document lacks the payload or the exact metadata,
    the event has what the document holds (empty data without a payload) and the metadata key
    `$index_incomplete` says what is missing; the store has the whole event."""
    exact = source.get(EXACT_METADATA_FIELD)
    metadata = exact if exact is not None else source.get("metadata") or {}
    event_metadata = {str(k): str(v) for k, v in metadata.items()}
    if missing := missing_parts(source):
        event_metadata[INCOMPLETE_KEY] = (
            "; ".join(missing) + " — read the event from the store by aggregate id and version"
        )
    return RecordedEvent(
        event_id=uuid.UUID(source["event_id"]),
        aggregate_id=source["aggregate_id"],
        aggregate_type=source["aggregate_type"],
        version=int(source["version"]),
        event_type=source["event_type"],
        data=base64.b64decode(source.get("payload", "")),
        content_type=source["content_type"],
        metadata=event_metadata,
        recorded_at=datetime.fromisoformat(source["recorded_at"]),
    )


def index_mappings() -> dict[str, Any]:
    keyword = {"type": "keyword"}
    return {
        # Documents are ours: an unknown field is a bug to surface, not to absorb.
        "dynamic": "strict",
        "properties": {
            "event_id": keyword,
            "aggregate_id": keyword,
            "aggregate_type": keyword,
            "event_type": keyword,
            "version": {"type": "long"},
            "recorded_at": {"type": "date", "format": "strict_date_optional_time"},
            "content_type": keyword,
            "metadata": {"type": "flat_object"},
            "data": {"type": "flat_object"},
            "payload": {"type": "binary"},
            # Stored for queries to return, never parsed into fields or indexed.
            EXACT_METADATA_FIELD: {"type": "object", "enabled": False},
            NOTES_FIELD: {"type": "keyword", "ignore_above": NOTE_IGNORE_ABOVE},
            # The W3C trace context of the append (absent when it was not traced).
            "trace_id": keyword,
            "traceparent": keyword,
        },
    }


def index_template(settings: OpenSearchSettings) -> dict[str, Any]:
    return {
        "index_patterns": [f"{settings.index_prefix}-*"],
        "priority": 100,
        "_meta": {"owner": "eventstore", "version": TEMPLATE_VERSION},
        "template": {
            "settings": {
                "number_of_shards": settings.shards,
                "number_of_replicas": settings.replicas,
                "refresh_interval": "1s",
            },
            "mappings": index_mappings(),
            "aliases": {settings.alias: {}},
        },
    }


def template_name(settings: OpenSearchSettings) -> str:
    return f"{settings.index_prefix}-template"
