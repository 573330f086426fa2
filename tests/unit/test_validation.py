"""Domain validation rules, without any service."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime

import pytest

from eventstore.domain.errors import InvalidArgument
from eventstore.domain.events import Direction, Expectation, ExpectedVersion
from eventstore.domain.queries import EventQuery
from eventstore.domain.subscriptions import AggregateCheckpoint, LogCheckpoint, Start, StartAt
from eventstore.domain.validation import (
    Limits,
    RawAppend,
    RawEvent,
    validate_append,
    validate_query,
    validate_read,
    validate_subscribe,
)


def raw(**overrides: object) -> RawAppend:
    fields: dict[str, object] = {
        "aggregate_id": "order-1",
        "aggregate_type": "Order",
        "expected": ExpectedVersion.any(),
        "events": [RawEvent("", "OrderPlaced", b'{"a": 1}', "")],
    }
    fields.update(overrides)
    return RawAppend(**fields)  # type: ignore[arg-type]


def fields_of(exc: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [v.field for v in exc.value.violations]


def test_defaults_are_filled_in() -> None:
    request = validate_append(raw(), Limits())
    (event,) = request.events
    assert event.content_type == "application/json"
    assert isinstance(event.event_id, uuid.UUID)


def test_exact_zero_means_no_stream() -> None:
    request = validate_append(raw(expected=ExpectedVersion.exact(0)), Limits())
    assert request.expected.expectation is Expectation.NO_STREAM


def test_every_violation_is_reported_at_once() -> None:
    bad = raw(aggregate_id="", aggregate_type="", expected=None, events=[])
    with pytest.raises(InvalidArgument) as caught:
        validate_append(bad, Limits())
    assert fields_of(caught) == ["aggregate_id", "aggregate_type", "expected_version", "events"]


def test_limits_are_configurable() -> None:
    limits = Limits(max_event_bytes=50, max_append_bytes=80, max_events_per_append=3)
    small = RawEvent("", "E", b"x" * 10, "application/octet-stream")
    big = RawEvent("", "E", b"x" * 60, "application/octet-stream")
    validate_append(raw(events=[small] * 3), limits)
    with pytest.raises(InvalidArgument) as caught:
        validate_append(raw(events=[big]), limits)
    assert fields_of(caught) == ["events[0]"]
    with pytest.raises(InvalidArgument) as caught:
        validate_append(raw(events=[small] * 4), limits)
    assert fields_of(caught) == ["events"]


def test_metadata_counts_towards_the_event_size() -> None:
    limits = Limits(max_event_bytes=100)
    event = RawEvent("", "E", b"{}", "", {"k": "v" * 100})
    with pytest.raises(InvalidArgument) as caught:
        validate_append(raw(events=[event]), limits)
    assert fields_of(caught) == ["events[0]"]


def test_metadata_entries_are_limited_per_event() -> None:
    limits = Limits(max_metadata_entries=3)
    at_limit = RawEvent("", "E", b"{}", "", {f"k{i}": "v" for i in range(3)})
    validate_append(raw(events=[at_limit]), limits)
    over = RawEvent("", "E", b"{}", "", {f"k{i}": "v" for i in range(4)})
    with pytest.raises(InvalidArgument) as caught:
        validate_append(raw(events=[at_limit, over]), limits)
    ((violation),) = caught.value.violations
    assert violation.field == "events[1].metadata"
    assert violation.description == "holds 4 entries; the limit is 3"


class _CountOnly(Mapping[str, str]):
    """Metadata that can be counted but not read: reading a key fails the test."""

    def __init__(self, count: int) -> None:
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("validation read a key of metadata it should refuse by count")

    def __getitem__(self, key: str) -> str:
        raise AssertionError("validation read a key of metadata it should refuse by count")


def test_too_many_metadata_entries_are_refused_before_any_key_is_read() -> None:
    """The per-key checks (control characters, the NFKC look-alike check) cost microseconds
    a key: an event of 200,000 keys is refused by its count alone."""
    event = RawEvent("", "E", b"{}", "", _CountOnly(200_000))
    with pytest.raises(InvalidArgument) as caught:
        validate_append(raw(events=[event]), Limits())
    assert [v.description for v in caught.value.violations] == [
        "holds 200000 entries; the limit is 64"
    ]
    # The same with real keys, reserved ones among them: only the count is reported.
    keys = {"$principal": "x", "\uff04x": "y", **{str(i): "" for i in range(200_000)}}
    with pytest.raises(InvalidArgument) as caught:
        validate_append(raw(events=[RawEvent("", "E", b"{}", "", keys)]), Limits())
    assert fields_of(caught) == ["events[0].metadata"]


@pytest.mark.parametrize(
    "key",
    [
        "$principal",
        "\uff04principal",  # fullwidth dollar sign
        "\ufe69principal",  # small dollar sign
        "\u200b$principal",  # zero-width space
        "\u2060\u200d$principal",  # word joiner, zero-width joiner
        "\u202e$principal",  # right-to-left override
        "\ufeff$x",  # byte order mark
    ],
)
def test_metadata_keys_that_read_as_reserved_ones_are_refused(key: str) -> None:
    event = RawEvent("", "E", b"{}", "", {"trace": "t", key: "auditor"})
    with pytest.raises(InvalidArgument) as caught:
        validate_append(raw(events=[event]), Limits())
    assert fields_of(caught) == [f"events[0].metadata[{key}]"]


def test_dollar_signs_inside_metadata_keys_are_fine() -> None:
    event = RawEvent("", "E", b"{}", "", {"price$": "1", "a\uff04b": "2", "\u00e9t\u00e9": "3"})
    assert validate_append(raw(events=[event]), Limits()).events[0].metadata["price$"] == "1"


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/vnd.order+json", "application/json; charset=utf-8"],
)
def test_json_content_types_are_checked(content_type: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_append(raw(events=[RawEvent("", "E", b"{oops", content_type)]), Limits())
    assert fields_of(caught) == ["events[0].data"]


def test_other_content_types_carry_any_bytes() -> None:
    validate_append(
        raw(events=[RawEvent("", "E", b"\xff\x00", "application/octet-stream")]), Limits()
    )


def test_reads_default_to_everything_forwards() -> None:
    request = validate_read("a", 0, Direction.FORWARDS, 0, Limits())
    assert (request.from_version, request.max_count) == (1, None)
    request = validate_read("a", 0, Direction.BACKWARDS, 5, Limits())
    assert (request.from_version, request.max_count) == (None, 5)


@pytest.mark.parametrize(
    ("expected", "current", "admits"),
    [
        (ExpectedVersion.any(), 0, True),
        (ExpectedVersion.any(), 7, True),
        (ExpectedVersion.no_stream(), 0, True),
        (ExpectedVersion.no_stream(), 1, False),
        (ExpectedVersion.stream_exists(), 0, False),
        (ExpectedVersion.stream_exists(), 3, True),
        (ExpectedVersion.exact(3), 3, True),
        (ExpectedVersion.exact(3), 4, False),
    ],
)
def test_expected_version_admits(expected: ExpectedVersion, current: int, admits: bool) -> None:
    assert expected.admits(current) is admits


def test_an_event_id_is_a_uuid_of_bounded_length() -> None:
    """uuid.UUID() also reads "urn:" and "-" repeated without end; such ids are refused."""
    canonical = "12345678-1234-5678-1234-567812345678"
    for spelling in (canonical, "{" + canonical + "}", "urn:uuid:" + canonical):
        validate_append(raw(events=[RawEvent(spelling, "E", b"{}", "")]), Limits())
    for spelling in ("urn:" * 10 + "uuid:" + canonical, "-" * 100 + canonical):
        with pytest.raises(InvalidArgument) as caught:
            validate_append(raw(events=[RawEvent(spelling, "E", b"{}", "")]), Limits())
        assert fields_of(caught) == ["events[0].event_id"]


# --- queries and subscriptions: extreme but well-formed values ------------------------------


def _token(body: object) -> str:
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def query(**overrides: object) -> EventQuery:
    fields: dict[str, object] = {
        "event_types": [],
        "aggregate_types": [],
        "aggregate_id": "",
        "raw_start": None,
        "raw_end": None,
        "page_size": 0,
        "page_token": "",
        "visible_event_id": "",
        "limits": Limits(),
    }
    fields.update(overrides)
    return validate_query(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"raw_start": (253_402_300_800, 0)}, "from"),  # year 10000
        ({"raw_end": (2**62, 0)}, "to"),
        ({"raw_start": (-(2**62), 0)}, "from"),
        ({"raw_start": (0, -1)}, "from.nanos"),
        ({"raw_end": (0, 1_000_000_000)}, "to.nanos"),
        ({"event_types": [f"E{i}" for i in range(101)]}, "event_types"),
        ({"aggregate_types": [f"A{i}" for i in range(101)]}, "aggregate_types"),
    ],
)
def test_extreme_queries_name_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        query(**overrides)
    assert fields_of(caught) == [field]


def test_the_whole_timestamp_range_is_accepted() -> None:
    found = query(raw_start=(-62_135_596_800, 0), raw_end=(253_402_300_799, 999_999_999))
    assert found.start == datetime(1, 1, 1, tzinfo=UTC)
    assert found.end == datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    assert len(query(event_types=[f"E{i}" for i in range(100)]).event_types) == 100


@pytest.mark.parametrize(
    "cursor",
    [
        [10**20, "a", 1],  # no date holds it
        [-(10**20), "a", 1],
        [True, "a", 1],
        [0, "a", 0],
        [0, "a", 2**63],
        [0, "a", False],
        [0.5, "a", 1],
    ],
    ids=repr,
)
def test_a_forged_page_token_is_refused(cursor: list[object]) -> None:
    token = _token({"f": EventQuery().fingerprint(), "a": cursor})
    with pytest.raises(InvalidArgument) as caught:
        query(page_token=token)
    assert fields_of(caught) == ["page_token"]


def test_a_page_token_of_ours_is_accepted() -> None:
    token = _token({"f": EventQuery().fingerprint(), "a": [1_700_000_000_000, "a", 2**63 - 1]})
    assert query(page_token=token).after == (1_700_000_000_000, "a", 2**63 - 1)


def subscribe(checkpoint: object, **overrides: object) -> Start:
    fields: dict[str, object] = {
        "aggregate_id": "",
        "aggregate_types": ["Order"],
        "event_types": [],
        "start": StartAt.CHECKPOINT,
        "checkpoint": _token(checkpoint),
        "limits": Limits(),
    }
    fields.update(overrides)
    return validate_subscribe(**fields)[1]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "checkpoint",
    [
        {"v": 1, "k": {"Order": {"0": 2**63}}},
        {"v": 1, "k": {"Order": {"0": True}}},
        {"v": 1, "k": {"Order": {"2147483648": 0}}},
        {"v": 1, "k": {"Order": {"-1": 0}}},
        {"v": 1, "a": "order-1", "n": 2**63 - 1},
        {"v": 1, "a": "order-1", "n": True},
    ],
    ids=repr,
)
def test_an_extreme_checkpoint_is_refused(checkpoint: object) -> None:
    with pytest.raises(InvalidArgument) as caught:
        subscribe(checkpoint)
    assert fields_of(caught) == ["checkpoint"]


def test_checkpoints_at_the_edges_are_accepted() -> None:
    positions = subscribe({"v": 1, "k": {"Order": {"2147483647": 2**63 - 1}}}).checkpoint
    assert positions == LogCheckpoint({("Order", 2**31 - 1): 2**63 - 1})
    last = subscribe({"v": 1, "a": "order-1", "n": 2**63 - 2}, aggregate_id="order-1")
    assert last.checkpoint == AggregateCheckpoint("order-1", 2**63 - 2)


def test_a_subscription_names_a_bounded_number_of_types() -> None:
    with pytest.raises(InvalidArgument) as caught:
        subscribe(None, start=StartAt.BEGINNING, event_types=[f"E{i}" for i in range(101)])
    assert fields_of(caught) == ["event_types"]


def test_a_start_time_is_checked_and_kept() -> None:
    start = subscribe(None, start=StartAt.TIME, from_time=(1_700_000_000, 5_000_000))
    assert start.time == datetime(2023, 11, 14, 22, 13, 20, 5000, tzinfo=UTC)
    with pytest.raises(InvalidArgument) as caught:
        subscribe(None, start=StartAt.TIME, from_time=(253_402_300_800, 0))
    assert fields_of(caught) == ["from_time"]
    with pytest.raises(InvalidArgument) as caught:
        subscribe(None, start=StartAt.TIME, from_time=(0, 1_000_000_000))
    assert fields_of(caught) == ["from_time.nanos"]
