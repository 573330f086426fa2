"""The headers of our Kafka records: ours, and the CloudEvents v1.0 attributes of the Kafka
protocol binding's binary content mode (wire/records.py). The real publisher and the official
SDK read them back in tests/integration/test_cloudevents.py."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import unquote, urljoin

import pytest

from eventstore.domain.events import RecordedEvent
from eventstore.wire.records import cloudevents_source, record_headers

EVENT = RecordedEvent(
    event_id=uuid.UUID("6e8bc430-9c3a-11d9-9669-0800200c9a66"),
    aggregate_id="order-17",
    aggregate_type="Order",
    version=3,
    event_type="OrderPlaced",
    data=b'{"total": 12}',
    content_type="application/json; charset=utf-8",
    metadata={"tenant": "t1"},
    recorded_at=datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC),
)


def headers_of(event: RecordedEvent) -> dict[str, bytes]:
    pairs = record_headers(event)
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), "a header name twice"
    return {name: v.encode() if isinstance(v, str) else v or b"" for name, v in pairs}


def test_a_record_carries_our_headers_and_the_binary_mode_cloudevent_attributes() -> None:
    assert headers_of(EVENT) == {
        # Ours, as consumers have read them so far.
        "event_id": b"6e8bc430-9c3a-11d9-9669-0800200c9a66",
        "event_type": b"OrderPlaced",
        "aggregate_type": b"Order",
        "version": b"3",
        "content_type": b"application/json; charset=utf-8",  # the event's data, in the value
        # CloudEvents v1.0: every attribute but datacontenttype as ce_<name>.
        "ce_specversion": b"1.0",
        "ce_id": b"6e8bc430-9c3a-11d9-9669-0800200c9a66",
        "ce_source": b"/eventstore/Order/order-17",
        "ce_type": b"OrderPlaced",
        "ce_time": b"2026-03-04T05:06:07.890123Z",
        "ce_subject": b"order-17",
        "ce_dataschema": b"https://type.googleapis.com/eventstore.v1.Event",
        # datacontenttype is content-type, and describes the value: the protobuf envelope.
        "content-type": b"application/protobuf",
    }


def test_the_source_percent_encodes_an_aggregate_id_with_odd_characters() -> None:
    event = dataclasses.replace(EVENT, aggregate_id="a/b c?d#e%f:g@h~i.j_k-l é😀")
    headers = headers_of(event)
    assert headers["ce_source"] == (
        b"/eventstore/Order/a%2Fb%20c%3Fd%23e%25f%3Ag%40h~i.j_k-l%20%C3%A9%F0%9F%98%80"
    )
    # The subject is the id itself (a String, not a URI).
    assert headers["ce_subject"] == "a/b c?d#e%f:g@h~i.j_k-l é😀".encode()


@pytest.mark.parametrize(
    "aggregate_id",
    ["..", ".", "...", "%2E%2E", "a/../b", "/", "%", "x?y=1#z", "é", "plain-id_1.2~3"],
)
def test_the_source_names_the_aggregate_in_one_segment_that_decodes_to_its_id(
    aggregate_id: str,
) -> None:
    source = cloudevents_source("Order", aggregate_id)
    root, kind, segment = source.removeprefix("/").split("/")
    assert (root, kind) == ("eventstore", "Order")
    assert unquote(segment) == aggregate_id
    # Resolving it against a base keeps the aggregate: no dot-segment to remove.
    assert urljoin("https://store.example/", source) == f"https://store.example{source}"


def test_no_two_aggregate_ids_share_a_source() -> None:
    """source + id must be unique per event, and event ids are unique per aggregate only."""
    ids = ["..", "%2E%2E", "%252E%252E", ".", "%2E", "a b", "a%20b", "a+b", "a/b", "a%2Fb"]
    assert len({cloudevents_source("Order", i) for i in ids}) == len(ids)
    assert cloudevents_source("Order", "x") != cloudevents_source("Invoice", "x")


def test_the_time_is_rfc3339_in_utc_with_microseconds_whatever_the_zone() -> None:
    east = timezone(timedelta(hours=2))
    for recorded_at, expected in [
        (datetime(2026, 3, 4, 7, 6, 7, 5, tzinfo=east), b"2026-03-04T05:06:07.000005Z"),
        (datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC), b"2026-03-04T05:06:07.000000Z"),
        (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), b"9999-12-31T23:59:59.999999Z"),
    ]:
        event = dataclasses.replace(EVENT, recorded_at=recorded_at)
        assert headers_of(event)["ce_time"] == expected
