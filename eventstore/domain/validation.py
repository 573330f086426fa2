"""Validation of everything a client sends, before anything is written.

Every rule names the request field it guards (as a path, e.g. ``events[2].data``) so the
error the client gets says exactly what to fix. Limits are configurable (see config.py).
"""

from __future__ import annotations

import dataclasses
import json
import re
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from eventstore.domain import personal
from eventstore.domain.errors import FieldViolation, InvalidArgument
from eventstore.domain.events import (
    MAX_VERSION,
    NO_EVENTS,
    AppendRequest,
    Direction,
    Expectation,
    ExpectedVersion,
    NewEvent,
)
from eventstore.domain.queries import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    MAX_TIMESTAMP_SECONDS,
    MIN_TIMESTAMP_SECONDS,
    EventQuery,
    decode_consistency_token,
    decode_page_token,
)
from eventstore.domain.subscriptions import (
    Start,
    StartAt,
    SubscriptionFilter,
    decode_checkpoint,
)

DEFAULT_CONTENT_TYPE = "application/json"
#: The longest spelling of a UUID that uuid.UUID() reads ("urn:uuid:" + 36); it would also read
#: "urn:" and "-" repeated without end, so the length is checked first.
MAX_EVENT_ID_LENGTH = 45
#: Metadata keys starting with this are set by the server only (e.g. the principal).
RESERVED_METADATA_PREFIX = "$"

_TYPE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]*")
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;.*)?")


@dataclass(frozen=True, slots=True)
class Limits:
    max_aggregate_id_bytes: int = 256
    max_type_name_length: int = 128
    max_events_per_append: int = 1000
    #: data + metadata keys and values + event type, per event
    max_event_bytes: int = 1024 * 1024
    #: the same, summed over one append
    max_append_bytes: int = 4 * 1024 * 1024
    max_metadata_key_length: int = 128
    #: Entries of one event's metadata. Metadata carries a handful of keys (correlation and
    #: causation ids, W3C trace context and baggage, tenant, user, source, schema version):
    #: 64 is several times what such uses need. Without a count only bytes bounded it, and a
    #: 1 MiB event of 200,000 one-byte keys cost seconds of server CPU (every protobuf map
    #: conversion of it takes 0.1-0.2 s; see README, Limits).
    max_metadata_entries: int = 64
    max_snapshot_bytes: int = 4 * 1024 * 1024
    #: event types, and aggregate types, one query or subscription names (each list)
    max_filter_types: int = 100


@dataclass(frozen=True, slots=True)
class RawEvent:
    """An event exactly as the wire delivered it; nothing checked yet."""

    event_id: str
    event_type: str
    data: bytes
    content_type: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    schema_version: int = 0


@dataclass(frozen=True, slots=True)
class RawAppend:
    aggregate_id: str
    aggregate_type: str
    #: None when the client named no expectation (or one this server does not know).
    expected: ExpectedVersion | None
    events: Sequence[RawEvent]


class _Collector:
    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def add(self, path: str, description: str) -> None:
        self.violations.append(FieldViolation(path, description))

    def raise_if_any(self) -> None:
        if self.violations:
            raise InvalidArgument(self.violations)


def _has_control_chars(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def is_reserved_key(key: str) -> bool:
    """Whether `key` reads as a server key to a person or a lenient consumer: compared after
    NFKC (fullwidth and small dollar signs become '$'), without invisible format characters
    (zero-width spaces and joiners, direction marks, BOM)."""
    visible = "".join(ch for ch in key if unicodedata.category(ch) != "Cf")
    return unicodedata.normalize("NFKC", visible).startswith(RESERVED_METADATA_PREFIX)


def check_metadata_entries(count: int, limits: Limits, path: str, out: _Collector) -> bool:
    """Whether `count` metadata entries are too many (and then say so)."""
    if count <= limits.max_metadata_entries:
        return False
    out.add(path, f"holds {count} entries; the limit is {limits.max_metadata_entries}")
    return True


def check_metadata_counts(counts: Sequence[int], limits: Limits) -> None:
    """Refuse an append from its events' metadata entry counts alone (the API checks them on
    the request's bytes, before decoding it: see api/decoding.py)."""
    out = _Collector()
    for index, count in enumerate(counts):
        check_metadata_entries(count, limits, f"events[{index}].metadata", out)
    out.raise_if_any()


def check_aggregate_id(value: str, limits: Limits, path: str, out: _Collector) -> None:
    if not value:
        out.add(path, "must not be empty")
    elif len(value.encode()) > limits.max_aggregate_id_bytes:
        out.add(path, f"must be at most {limits.max_aggregate_id_bytes} bytes of UTF-8")
    elif _has_control_chars(value):
        out.add(path, "must not contain control characters")


def check_type_name(value: str, limits: Limits, path: str, out: _Collector) -> None:
    if not value:
        out.add(path, "must not be empty")
    elif len(value) > limits.max_type_name_length:
        out.add(path, f"must be at most {limits.max_type_name_length} characters")
    elif not _TYPE_NAME.fullmatch(value):
        out.add(path, "must start with a letter and hold only letters, digits, '.', '_' or '-'")


def check_type_names(names: Sequence[str], limits: Limits, path: str, out: _Collector) -> None:
    if len(names) > limits.max_filter_types:
        out.add(path, f"must name at most {limits.max_filter_types} types")
        return
    for index, name in enumerate(names):
        check_type_name(name, limits, f"{path}[{index}]", out)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: A google.protobuf.Timestamp as sent: (seconds, nanos), nothing checked yet.
RawTime = tuple[int, int]


def check_time(value: RawTime | None, path: str, out: _Collector) -> datetime | None:
    if value is None:
        return None
    seconds, nanos = value
    if not MIN_TIMESTAMP_SECONDS <= seconds <= MAX_TIMESTAMP_SECONDS:
        out.add(path, "must be between 0001-01-01 and 9999-12-31")
    elif not 0 <= nanos <= 999_999_999:
        out.add(f"{path}.nanos", "must be between 0 and 999,999,999")
    else:
        return EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)
    return None


def is_json_content_type(content_type: str) -> bool:
    essence = content_type.split(";", 1)[0].strip().lower()
    return essence == "application/json" or essence.endswith("+json")


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _check_json(data: bytes, path: str, out: _Collector) -> None:
    try:
        json.loads(data, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        out.add(path, f"is not valid JSON ({type(exc).__name__}) but the content type says JSON")
    except RecursionError:
        # Python's parser gives up at about 1,000 levels; no reader of ours would fare better.
        out.add(path, "is JSON nested too deeply to be read back (about 1,000 levels or more)")


def _check_event(
    raw: RawEvent, index: int, limits: Limits, out: _Collector
) -> tuple[NewEvent | None, int]:
    path = f"events[{index}]"
    event_id: uuid.UUID | None = None
    if raw.event_id:
        try:
            if len(raw.event_id) > MAX_EVENT_ID_LENGTH:
                raise ValueError("too long")
            event_id = uuid.UUID(raw.event_id)
        except ValueError:
            out.add(
                f"{path}.event_id", "must be a UUID such as 1b4e28ba-2fa1-11d2-883f-0016d3cca427"
            )
    else:
        event_id = uuid.uuid4()
    check_type_name(raw.event_type, limits, f"{path}.event_type", out)
    content_type = raw.content_type or DEFAULT_CONTENT_TYPE
    if len(content_type) > limits.max_type_name_length or not _CONTENT_TYPE.fullmatch(content_type):
        out.add(f"{path}.content_type", "must be a media type such as application/json")
    elif is_json_content_type(content_type):
        _check_json(raw.data, f"{path}.data", out)
    size = len(raw.data) + len(raw.event_type.encode())
    # Counted before any key is looked at: the checks below cost microseconds per key.
    if check_metadata_entries(len(raw.metadata), limits, f"{path}.metadata", out):
        return None, size
    for key, value in raw.metadata.items():
        size += len(key.encode()) + len(value.encode())
        if not key or len(key) > limits.max_metadata_key_length or _has_control_chars(key):
            out.add(
                f"{path}.metadata",
                f"keys must be 1 to {limits.max_metadata_key_length} characters, "
                "without control characters",
            )
        elif is_reserved_key(key):
            out.add(
                f"{path}.metadata[{key}]",
                f"keys starting with {RESERVED_METADATA_PREFIX!r} (or a character that looks "
                "like it) are reserved for the server",
            )
    size += _check_personal(raw, content_type, path, out)
    if raw.schema_version < 0:
        out.add(f"{path}.schema_version", "must be 0 (the latest registered) or a version")
    if size > limits.max_event_bytes:
        out.add(
            path,
            f"is {size} bytes (data + metadata + type); the limit is {limits.max_event_bytes}",
        )
    if event_id is None:
        return None, size
    event = NewEvent(
        event_id=event_id,
        event_type=raw.event_type,
        data=raw.data,
        content_type=content_type,
        metadata=dict(raw.metadata),
        schema_version=raw.schema_version,
    )
    return event, size


def _check_personal(raw: RawEvent, content_type: str, path: str, out: _Collector) -> int:
    """The data subject and personal fields an event declares; the bytes sealing adds."""
    subject = raw.metadata.get(personal.SUBJECT_KEY)
    fields = raw.metadata.get(personal.FIELDS_KEY)
    if subject is None:
        if fields is not None:
            out.add(
                f"{path}.metadata[{personal.FIELDS_KEY}]",
                f"names personal fields of no data subject (add {personal.SUBJECT_KEY!r})",
            )
        return 0
    if problem := personal.subject_problem(subject):
        out.add(f"{path}.metadata[{personal.SUBJECT_KEY}]", problem)
        return 0
    paths: tuple[str, ...] = ()
    if fields is not None:
        where = f"{path}.metadata[{personal.FIELDS_KEY}]"
        try:
            paths = personal.parse_paths(fields)
        except ValueError as exc:
            out.add(where, str(exc))
            return 0
        if not is_json_content_type(content_type) or not raw.data.lstrip().startswith(b"{"):
            out.add(where, "personal fields need a JSON object as data")
            return 0
    return personal.sealing_overhead(personal.Personal(subject, paths))


def validate_append(raw: RawAppend, limits: Limits) -> AppendRequest:
    """Check an append completely; raise InvalidArgument naming every bad field."""
    out = _Collector()
    check_aggregate_id(raw.aggregate_id, limits, "aggregate_id", out)
    check_type_name(raw.aggregate_type, limits, "aggregate_type", out)
    expected = raw.expected
    if expected is None:
        out.add("expected_version", "must be one of any, no_stream, stream_exists or exact")
    elif expected.expectation is Expectation.EXACT:
        if not NO_EVENTS <= expected.version <= MAX_VERSION:
            out.add("expected_version.exact", "must be 0 (no events yet) or a positive version")
        elif expected.version > MAX_VERSION - max(len(raw.events), 1):
            # Versions are int64: the events would have none left.
            out.add(
                "expected_version.exact", f"leaves no version for the events (max {MAX_VERSION})"
            )
        elif expected.version == NO_EVENTS:
            expected = ExpectedVersion.no_stream()
    if not raw.events:
        out.add("events", "must hold at least one event")
    elif len(raw.events) > limits.max_events_per_append:
        out.add("events", f"must hold at most {limits.max_events_per_append} events")
    events: list[NewEvent] = []
    total = 0
    seen: dict[uuid.UUID, int] = {}
    for index, raw_event in enumerate(raw.events[: limits.max_events_per_append]):
        event, size = _check_event(raw_event, index, limits, out)
        total += size
        if event is not None:
            if event.event_id in seen:
                out.add(
                    f"events[{index}].event_id",
                    f"repeats the id of events[{seen[event.event_id]}]",
                )
            seen[event.event_id] = index
            events.append(event)
    if total > limits.max_append_bytes:
        out.add("events", f"total {total} bytes; the limit per append is {limits.max_append_bytes}")
    out.raise_if_any()
    assert expected is not None
    return AppendRequest(raw.aggregate_id, raw.aggregate_type, expected, tuple(events))


def validate_schema_names(
    aggregate_type: str, event_type: str, limits: Limits, event_type_optional: bool = False
) -> None:
    """The names of a schema request (an empty event type, if optional, means all)."""
    out = _Collector()
    check_type_name(aggregate_type, limits, "aggregate_type", out)
    if event_type or not event_type_optional:
        check_type_name(event_type, limits, "event_type", out)
    out.raise_if_any()


def validate_aggregate_id(aggregate_id: str, limits: Limits) -> None:
    out = _Collector()
    check_aggregate_id(aggregate_id, limits, "aggregate_id", out)
    out.raise_if_any()


@dataclass(frozen=True, slots=True)
class ReadRequest:
    aggregate_id: str
    #: forwards: first version to return (>= 1); backwards: highest version, None = current
    from_version: int | None
    direction: Direction
    #: None means no limit
    max_count: int | None


def validate_read(
    aggregate_id: str, from_version: int, direction: Direction, max_count: int, limits: Limits
) -> ReadRequest:
    out = _Collector()
    check_aggregate_id(aggregate_id, limits, "aggregate_id", out)
    if not 0 <= from_version <= MAX_VERSION:
        out.add("from_version", "must be 0 or a positive version")
    if max_count < 0:
        out.add("max_count", "must be 0 (all events) or a positive count")
    out.raise_if_any()
    start = max(from_version, 1) if direction is Direction.FORWARDS else from_version or None
    return ReadRequest(aggregate_id, start, direction, max_count or None)


def validate_subscribe(
    aggregate_id: str,
    aggregate_types: Sequence[str],
    event_types: Sequence[str],
    start: StartAt,
    checkpoint: str,
    limits: Limits,
    from_time: RawTime | None = None,
) -> tuple[SubscriptionFilter, Start]:
    out = _Collector()
    if aggregate_id:
        check_aggregate_id(aggregate_id, limits, "aggregate_id", out)
        if len(aggregate_types) > 1:
            out.add("aggregate_types", "with aggregate_id, name at most its own type")
    check_type_names(aggregate_types, limits, "aggregate_types", out)
    check_type_names(event_types, limits, "event_types", out)
    decoded = None
    if start is StartAt.CHECKPOINT:
        try:
            decoded = decode_checkpoint(checkpoint)
        except InvalidArgument as exc:
            out.violations.extend(exc.violations)
    time = check_time(from_time, "from_time", out) if start is StartAt.TIME else None
    out.raise_if_any()
    subscription = SubscriptionFilter(
        aggregate_id=aggregate_id or None,
        aggregate_types=frozenset(aggregate_types),
        event_types=frozenset(event_types),
    )
    return subscription, Start(start, decoded, time)


DEFAULT_GROUP_IN_FLIGHT = 64
MAX_GROUP_IN_FLIGHT = 1000
DEFAULT_PARKED_PAGE = 100
MAX_PARKED_PAGE = 1000


def validate_group_join(
    group: str,
    aggregate_types: Sequence[str],
    event_types: Sequence[str],
    start: StartAt,
    from_time: RawTime | None,
    max_in_flight: int,
    limits: Limits,
) -> tuple[str, SubscriptionFilter, Start, int]:
    """A SubscribeGroup join: the group, its filter, where a new group starts, and how many
    deliveries the member may hold."""
    out = _Collector()
    check_type_name(group, limits, "join.group", out)
    check_type_names(aggregate_types, limits, "join.aggregate_types", out)
    check_type_names(event_types, limits, "join.event_types", out)
    time = check_time(from_time, "join.from_time", out) if start is StartAt.TIME else None
    if not 0 <= max_in_flight <= MAX_GROUP_IN_FLIGHT:
        out.add(
            "join.max_in_flight",
            f"must be between 0 (default {DEFAULT_GROUP_IN_FLIGHT}) and {MAX_GROUP_IN_FLIGHT}",
        )
    out.raise_if_any()
    subscription = SubscriptionFilter(
        aggregate_types=frozenset(aggregate_types), event_types=frozenset(event_types)
    )
    return group, subscription, Start(start, None, time), max_in_flight or DEFAULT_GROUP_IN_FLIGHT


def validate_parked(group: str, max_count: int, limits: Limits) -> int:
    """ListParked: the page size."""
    out = _Collector()
    check_type_name(group, limits, "group", out)
    if not 0 <= max_count <= MAX_PARKED_PAGE:
        out.add(
            "max_count", f"must be between 0 (default {DEFAULT_PARKED_PAGE}) and {MAX_PARKED_PAGE}"
        )
    out.raise_if_any()
    return max_count or DEFAULT_PARKED_PAGE


def validate_query(
    event_types: Sequence[str],
    aggregate_types: Sequence[str],
    aggregate_id: str,
    raw_start: RawTime | None,
    raw_end: RawTime | None,
    page_size: int,
    page_token: str,
    visible_event_id: str,
    limits: Limits,
    count_total: bool = False,
    min_consistency_token: str = "",
) -> EventQuery:
    out = _Collector()
    check_type_names(event_types, limits, "event_types", out)
    check_type_names(aggregate_types, limits, "aggregate_types", out)
    if aggregate_id:
        check_aggregate_id(aggregate_id, limits, "aggregate_id", out)
    start = check_time(raw_start, "from", out)
    end = check_time(raw_end, "to", out)
    if start is not None and end is not None and start >= end:
        out.add("to", "must be later than from")
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        out.add("page_size", f"must be between 0 (default {DEFAULT_PAGE_SIZE}) and {MAX_PAGE_SIZE}")
    visible: uuid.UUID | None = None
    if visible_event_id:
        try:
            visible = uuid.UUID(visible_event_id)
        except ValueError:
            out.add("visible_event_id", "must be a UUID")
    if min_consistency_token:
        if visible_event_id:
            out.add("min_consistency_token", "cannot be combined with visible_event_id")
        else:
            try:
                visible = decode_consistency_token(min_consistency_token)
            except InvalidArgument as exc:
                out.violations.extend(exc.violations)
    out.raise_if_any()
    query = EventQuery(
        event_types=tuple(event_types),
        aggregate_types=tuple(aggregate_types),
        aggregate_id=aggregate_id or None,
        start=start,
        end=end,
        page_size=page_size or DEFAULT_PAGE_SIZE,
        visible_event_id=visible,
        count_total=count_total,
        wait_until_visible=bool(min_consistency_token),
    )
    if page_token:
        return dataclasses.replace(query, after=decode_page_token(query, page_token))
    return query


def validate_snapshot(
    aggregate_id: str,
    version: int,
    state: bytes,
    state_type: str,
    schema_version: int,
    limits: Limits,
) -> None:
    out = _Collector()
    check_aggregate_id(aggregate_id, limits, "aggregate_id", out)
    if not 1 <= version <= MAX_VERSION:
        out.add("version", "must be a version of the aggregate (1 or more)")
    if len(state) > limits.max_snapshot_bytes:
        out.add("state", f"is {len(state)} bytes; the limit is {limits.max_snapshot_bytes}")
    check_type_name(state_type, limits, "state_type", out)
    if schema_version < 0:
        out.add("schema_version", "must be 0 or more")
    out.raise_if_any()


def validate_subject(subject: str) -> None:
    """The data subject an erasure names."""
    if problem := personal.subject_problem(subject):
        raise InvalidArgument.of("subject", problem)
