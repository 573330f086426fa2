"""Domain validation rules, without any service."""

from __future__ import annotations

import uuid

import pytest

from eventstore.domain.errors import InvalidArgument
from eventstore.domain.events import Direction, Expectation, ExpectedVersion
from eventstore.domain.validation import (
    Limits,
    RawAppend,
    RawEvent,
    validate_append,
    validate_read,
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
