"""Size bounds (eventstore/sizes.py, wire/records.py) against real encodings of the
largest events the store accepts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from eventstore import sizes
from eventstore.api.convert import append_from_proto
from eventstore.config import KafkaSettings
from eventstore.domain.validation import Limits, validate_append
from eventstore.sizes import (
    MAX_CHECKPOINT_BYTES,
    max_append_request_bytes,
    max_event_bytes,
    max_snapshot_request_bytes,
    max_subscription_message_bytes,
    varint_size,
)
from eventstore.v1 import eventstore_pb2 as pb
from eventstore.wire import records
from eventstore.wire.events import event_to_proto
from tests import worst_case

DEFAULT = Limits()
SMALL = Limits(max_aggregate_id_bytes=1, max_type_name_length=8, max_event_bytes=40)
#: The append limit below the event limit: an event can be no larger than the append.
CAPPED = Limits(max_event_bytes=100_000, max_append_bytes=30_000)
TINY_MAP = Limits(max_event_bytes=300)
#: Entries not limited in practice: every counted byte may be a tiny entry of its own.
UNCOUNTED = Limits(max_metadata_entries=10**9)


def _bytes(data: str | bytes | None) -> bytes:
    return data.encode() if isinstance(data, str) else data or b""


def zigzag_varint(value: int) -> int:
    return varint_size(2 * value)


def librdkafka_record_size(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> int:
    """What librdkafka's produce() compares with message.max.bytes."""
    serialized = sum(
        zigzag_varint(len(name)) + len(name) + zigzag_varint(len(data)) + len(data)
        for name, data in headers
    )
    return records.RECORD_OVERHEAD + len(key) + len(value) + serialized


@pytest.mark.parametrize("heavy_metadata", [True, False], ids=["metadata", "data"])
@pytest.mark.parametrize("limits", [DEFAULT, SMALL, CAPPED, TINY_MAP, UNCOUNTED], ids=repr)
def test_the_largest_accepted_event_fits_its_bound(limits: Limits, heavy_metadata: bool) -> None:
    event = worst_case.recorded(limits, heavy_metadata)
    value = records.record_value(event)
    assert len(value) <= max_event_bytes(limits)
    headers = [(name, _bytes(data)) for name, data in records.record_headers(event)]
    size = librdkafka_record_size(event.aggregate_id.encode(), value, headers)
    assert size <= records.max_record_bytes(limits)
    batch = records.max_batch_bytes(limits)
    assert batch == records.max_record_bytes(limits) + records.RECORD_BATCH_OVERHEAD


def test_the_bound_is_close_for_the_default_limits() -> None:
    """The entry limit keeps the worst case near the counted bytes; the bound should not be
    much above what such an event really encodes to."""
    event = worst_case.recorded(DEFAULT, heavy_metadata=True)
    # and the server's own: the principal, the traceparent and the tracestate
    assert len(event.metadata) == DEFAULT.max_metadata_entries + 3
    actual = len(records.record_value(event))
    assert actual > DEFAULT.max_event_bytes
    assert max_event_bytes(DEFAULT) - actual < 0.01 * actual


def test_the_entry_limit_takes_the_bound_from_three_times_the_event_to_about_once() -> None:
    """Without the entry limit, one-byte entries made an event about three times its counted
    bytes once encoded (the Kafka topics were sized for that); the ratio bound still holds
    for limits that allow that many entries."""
    event = worst_case.recorded(UNCOUNTED, heavy_metadata=True)
    actual = len(records.record_value(event))
    assert actual > 3 * UNCOUNTED.max_event_bytes
    assert actual <= max_event_bytes(UNCOUNTED) < 1.01 * actual
    assert max_event_bytes(DEFAULT) < DEFAULT.max_event_bytes + 8 * 1024


def test_a_metadata_entry_adds_at_most_its_framing_bound() -> None:
    """The per-entry bound of the count bound, against protobuf itself, around each length
    where a varint grows."""
    for counted in (1, 2, 127, 128, 129, 16_383, 16_384, 16_390, 2**21 - 1, 2**21 + 5):
        for key in {1, 2, 127, 128, counted // 2, counted - 1, counted} & set(range(counted + 1)):
            entry = pb.Event(metadata={"k" * key: "v" * (counted - key)}).ByteSize()
            assert entry - counted <= sizes._entry_framing(counted), (counted, key)


@pytest.mark.parametrize("limits", [DEFAULT, SMALL], ids=repr)
def test_every_header_is_bounded(limits: Limits) -> None:
    event = worst_case.recorded(limits, heavy_metadata=False)
    bounds = records._header_value_bounds(limits)
    headers = dict(records.record_headers(event))
    assert [name for name, _ in records.record_headers(event)] == list(bounds)
    for name, data in headers.items():
        assert len(_bytes(data)) <= bounds[name], name
    # The source's bound is reached: the longest type, and an id encoded at 3 bytes per byte.
    assert len(_bytes(headers["ce_source"])) == bounds["ce_source"]


def test_a_metadata_entry_costs_at_most_three_times_its_bytes_beyond_two_bytes() -> None:
    """The per-entry inequality the metadata bound rests on, against protobuf itself."""
    for counted in [*range(3, 300), 1000, 16_383, 16_384, 16_390, 2**21 + 5]:
        for key in {1, 2, counted // 2, counted - 1, counted}:
            entry = pb.Event(metadata={"k" * key: "v" * (counted - key)}).ByteSize()
            assert entry <= 3 * counted, (counted, key)
    assert pb.Event(metadata={"k": ""}).ByteSize() == 3 * 1 + 4
    assert pb.Event(metadata={"kk": ""}).ByteSize() == 3 * 2 + 2


@pytest.mark.parametrize("entries", [64, 10**9])
def test_the_largest_accepted_append_request_fits_its_bound(entries: int) -> None:
    limits = Limits(
        max_events_per_append=4,
        max_event_bytes=6_000,
        max_append_bytes=20_000,
        max_metadata_entries=entries,
    )
    per_event = dataclasses.replace(limits, max_event_bytes=5_000)
    events = [
        worst_case.raw_event(per_event, heavy_metadata=True, event_id=worst_case.wide_event_id(i))
        for i in range(limits.max_events_per_append)
    ]
    request = pb.AppendRequest(
        aggregate_id="a" * limits.max_aggregate_id_bytes,
        aggregate_type="T" * limits.max_type_name_length,
        # The highest version that leaves room for the events (as long a varint as 2^63-1).
        expected_version=pb.ExpectedVersion(exact=2**63 - 1 - limits.max_events_per_append),
        events=[
            pb.EventData(
                event_id=e.event_id,
                event_type=e.event_type,
                data=e.data,
                content_type=e.content_type,
                metadata=dict(e.metadata),
            )
            for e in events
        ],
    )
    validate_append(append_from_proto(request), limits)  # accepted
    assert request.ByteSize() <= max_append_request_bytes(limits)


def test_the_largest_snapshot_and_subscription_message_fit_their_bounds() -> None:
    limits = Limits(max_snapshot_bytes=5_000)
    snapshot = pb.Snapshot(
        aggregate_id="a" * limits.max_aggregate_id_bytes,
        version=2**63 - 1,
        state=b"s" * limits.max_snapshot_bytes,
        state_type="T" * limits.max_type_name_length,
        schema_version=-1,
    )
    snapshot.created_at.FromDatetime(worst_case.LATEST)
    assert snapshot.ByteSize() <= max_snapshot_request_bytes(limits)
    message = pb.SubscribeResponse(
        event=event_to_proto(worst_case.recorded(TINY_MAP, heavy_metadata=True)),
        checkpoint="c" * MAX_CHECKPOINT_BYTES,
    )
    assert message.ByteSize() <= max_subscription_message_bytes(TINY_MAP)


def test_topics_take_the_largest_record_but_never_less_than_kafka_s_default() -> None:
    big = records.max_batch_bytes(DEFAULT)
    assert records.message_bytes(DEFAULT, 64 * 2**20) >= big
    assert records.message_bytes(SMALL, 64 * 2**20) == records.KAFKA_DEFAULT_MAX_MESSAGE_BYTES
    # A cluster capped below Kafka's default: small limits still fit under the cap.
    assert records.message_bytes(SMALL, 500_000) == 500_000


def test_the_readme_states_the_bounds_of_the_default_limits() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for number in (
        max_event_bytes(DEFAULT),
        records.max_batch_bytes(DEFAULT),
        records.message_bytes(DEFAULT, KafkaSettings().max_message_bytes),
        max_append_request_bytes(DEFAULT),
    ):
        assert f"{number:,}" in readme
