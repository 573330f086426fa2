"""An append with too many metadata entries in an event is refused from its bytes
(eventstore/api/precheck.py): the count read shallowly must match what decoding finds, and
the refusal reach the client as validation's would, from an in-process server over fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from eventstore.api.precheck import append_metadata_counts, append_precheck
from eventstore.domain.validation import Limits
from eventstore.v1 import eventstore_pb2 as pb
from eventstore.v1 import eventstore_pb2_grpc as pb_grpc
from tests.fakes import in_memory_server


def append(*metadata: dict[str, str]) -> pb.AppendRequest:
    return pb.AppendRequest(
        aggregate_id="order-1",
        aggregate_type="Order",
        expected_version=pb.ExpectedVersion(exact=0),
        events=[
            pb.EventData(event_type="E", data=b'{"a": 1}', metadata=entries, content_type="")
            for entries in metadata
        ],
    )


def entries(count: int) -> dict[str, str]:
    return {f"key-{i}": "value" for i in range(count)}


def test_the_shallow_count_is_the_decoded_one() -> None:
    request = append(entries(0), entries(3), entries(64), entries(1000))
    data = request.SerializeToString()
    assert append_metadata_counts(data) == [len(e.metadata) for e in request.events]
    assert append_metadata_counts(b"\x22\x05\x2a") is None  # cut short: decoding says why


def test_the_precheck_refuses_what_validation_would_and_nothing_else() -> None:
    precheck = append_precheck(Limits(max_metadata_entries=3))
    assert precheck(append(entries(3), entries(0)).SerializeToString()) is None
    assert precheck(b"\xff\xff") is None  # not a message: left to decoding
    refusal = precheck(append(entries(3), entries(4), entries(5)).SerializeToString())
    assert refusal is not None
    assert [(v.field, v.description) for v in refusal.violations] == [
        ("events[1].metadata", "holds 4 entries; the limit is 3"),
        ("events[2].metadata", "holds 5 entries; the limit is 3"),
    ]


def test_entries_are_counted_as_sent() -> None:
    """A map may repeat a key on the wire (the last wins): the count is of entries sent."""
    entry = pb.EventData(metadata={"k": "v"}).SerializeToString()
    event = entry * 5  # five entries of one key: one entry once decoded
    data = b"\x22" + bytes([len(event)]) + event
    assert len(pb.AppendRequest.FromString(data).events[0].metadata) == 1
    assert append_metadata_counts(data) == [5]


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    async with in_memory_server() as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.EventStoreAsyncStub:
    return pb_grpc.EventStoreStub(channel)


async def test_the_server_refuses_an_event_over_the_limit_naming_it(
    stub: pb_grpc.EventStoreAsyncStub,
) -> None:
    limit = Limits().max_metadata_entries
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Append(append(entries(1), entries(200_000)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad) for detail in status.details)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("events[1].metadata", f"holds 200000 entries; the limit is {limit}")
    ]
    reply = await stub.Append(append(entries(limit)))
    assert reply.last_version == 1


async def test_the_server_counts_before_decoding(channel: grpc.aio.Channel) -> None:
    """Entries of one repeated key decode to one: only a count of the bytes refuses them."""
    entry = pb.EventData(metadata={"k": "v"}).SerializeToString()
    event = pb.EventData(event_type="E", data=b"{}").SerializeToString()
    event += entry * (Limits().max_metadata_entries + 1)
    # AppendRequest field 4 (events), length-delimited, after the other fields.
    request = append().SerializeToString() + b"\x22" + _varint(len(event)) + event
    assert len(pb.AppendRequest.FromString(request).events[0].metadata) == 1
    call = channel.unary_unary("/eventstore.v1.EventStore/Append", None, None)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = str(caught.value.details())
    assert "events[0].metadata: holds 65 entries" in details


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])
