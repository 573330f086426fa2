"""Raw request bytes for every RPC (valid seeds and hypothesis mutations of them), sent through
a generic call that skips the stubs' serializers, and the status codes each RPC may answer.

A request that does not decode, or decodes to nonsense, must be refused for what it is
(INVALID_ARGUMENT, or the answer a well-formed request of that content gets): never UNKNOWN or
INTERNAL (a bug of ours), never UNAVAILABLE (which tells the client to retry the same bytes).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from hypothesis import strategies as st

from eventstore.v1 import eventstore_pb2 as pb

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
#: How long a stream is given to answer (its first message, or its refusal).
STREAM_WAIT_S = 10.0


@dataclass(frozen=True)
class Rpc:
    path: str
    streaming: bool
    #: valid requests, serialized: the seeds of the mutations
    seeds: tuple[bytes, ...]
    allowed: frozenset[grpc.StatusCode]


def _seeds(*messages: Message) -> tuple[bytes, ...]:
    return tuple(message.SerializeToString() for message in messages)


def _event(**fields: object) -> pb.EventData:
    return pb.EventData(event_type="Happened", data=b'{"n": 1}', **fields)  # type: ignore[arg-type]


SEED_AGGREGATE = "raw-seed"
SERVICE = "/eventstore.v1.EventStore/"

RPCS: dict[str, Rpc] = {
    "Append": Rpc(
        SERVICE + "Append",
        False,
        _seeds(
            pb.AppendRequest(
                aggregate_id=SEED_AGGREGATE,
                aggregate_type="Order",
                expected_version=pb.ExpectedVersion(any=Empty()),
                events=[_event(metadata={"k": "v"}), _event(content_type="text/plain")],
            ),
            pb.AppendRequest(
                aggregate_id="raw-other",
                aggregate_type="Order",
                expected_version=pb.ExpectedVersion(exact=3),
                events=[_event(event_id="6f1c1d2e-0000-4000-8000-000000000001")],
            ),
        ),
        frozenset({OK, INVALID, grpc.StatusCode.FAILED_PRECONDITION}),
    ),
    "ReadAggregate": Rpc(
        SERVICE + "ReadAggregate",
        True,
        _seeds(
            pb.ReadAggregateRequest(aggregate_id=SEED_AGGREGATE, from_version=1, max_count=10),
            pb.ReadAggregateRequest(
                aggregate_id=SEED_AGGREGATE, direction=pb.DIRECTION_BACKWARDS, from_version=2
            ),
        ),
        frozenset({OK, INVALID, NOT_FOUND}),
    ),
    "GetAggregate": Rpc(
        SERVICE + "GetAggregate",
        False,
        _seeds(pb.GetAggregateRequest(aggregate_id=SEED_AGGREGATE)),
        frozenset({OK, INVALID, NOT_FOUND}),
    ),
    "Subscribe": Rpc(
        SERVICE + "Subscribe",
        True,
        _seeds(
            pb.SubscribeRequest(aggregate_types=["Order"], event_types=["Happened"]),
            pb.SubscribeRequest(aggregate_id=SEED_AGGREGATE, from_end=Empty()),
            pb.SubscribeRequest(aggregate_types=["Order"], checkpoint="eyJ2IjoxLCJrIjp7fX0"),
        ),
        frozenset({OK, INVALID, NOT_FOUND}),
    ),
    "QueryEvents": Rpc(
        SERVICE + "QueryEvents",
        False,
        _seeds(
            pb.QueryEventsRequest(
                event_types=["Happened"],
                aggregate_types=["Order"],
                page_size=10,
                visible_event_id="6f1c1d2e-0000-4000-8000-000000000001",
                count_total=True,
                **{"from": {"seconds": 1_700_000_000}, "to": {"seconds": 1_800_000_000}},  # type: ignore[arg-type]
            ),
        ),
        frozenset({OK, INVALID}),
    ),
    "SaveSnapshot": Rpc(
        SERVICE + "SaveSnapshot",
        False,
        _seeds(
            pb.SaveSnapshotRequest(
                aggregate_id=SEED_AGGREGATE,
                version=1,
                state=b"state",
                state_type="OrderState",
                schema_version=1,
            )
        ),
        frozenset({OK, INVALID}),
    ),
    "GetSnapshot": Rpc(
        SERVICE + "GetSnapshot",
        False,
        _seeds(
            pb.GetSnapshotRequest(aggregate_id=SEED_AGGREGATE),
            pb.GetSnapshotRequest(aggregate_id=SEED_AGGREGATE, max_version=1),
        ),
        frozenset({OK, INVALID, NOT_FOUND}),
    ),
    "Health.Check": Rpc(
        "/grpc.health.v1.Health/Check",
        False,
        _seeds(
            health_pb2.HealthCheckRequest(),
            health_pb2.HealthCheckRequest(service="eventstore.v1.EventStore"),
        ),
        frozenset({OK, INVALID, NOT_FOUND}),
    ),
    "Health.Watch": Rpc(
        "/grpc.health.v1.Health/Watch",
        True,
        _seeds(health_pb2.HealthCheckRequest(service="eventstore.v1.EventStore")),
        frozenset({OK, INVALID}),
    ),
}


@st.composite
def _mutated(draw: st.DrawFn, seeds: tuple[bytes, ...]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        match draw(st.sampled_from(["flip", "insert", "delete", "invalid utf-8"])):
            case "flip" if data:
                at = min(at, len(data) - 1)
                data[at] ^= 1 << draw(st.integers(0, 7))
            case "delete" if data:
                del data[min(at, len(data) - 1)]
            case "invalid utf-8":
                data[at:at] = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"]))
            case _:
                data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


def raw_requests(rpc: Rpc) -> st.SearchStrategy[bytes]:
    """Mostly mutations of valid requests (they get past the first bytes), some pure noise."""
    return st.one_of(_mutated(rpc.seeds), _mutated(rpc.seeds), st.binary(max_size=64))


async def call(channel: grpc.aio.Channel, rpc: Rpc, request: bytes) -> grpc.StatusCode:
    """The status the server answers `request` (raw bytes) with. A stream that sends its first
    message is OK (subscriptions never end by themselves)."""
    try:
        if not rpc.streaming:
            await channel.unary_unary(rpc.path, None, None)(request, timeout=STREAM_WAIT_S)
            return OK
        stream = channel.unary_stream(rpc.path, None, None)(request, timeout=STREAM_WAIT_S)
        try:
            async with asyncio.timeout(STREAM_WAIT_S):
                async for _ in stream:
                    break
        finally:
            stream.cancel()
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return OK


async def check(channel: grpc.aio.Channel, rpc: Rpc, request: bytes) -> None:
    """`request` gets an allowed answer, and a valid request is served afterwards."""
    code = await call(channel, rpc, request)
    assert code in rpc.allowed, f"{rpc.path} answered {code} to {request!r}"
    for seed in rpc.seeds:
        answer = await call(channel, rpc, seed)
        assert answer in rpc.allowed - {INVALID}, f"{rpc.path} answered {answer} to a seed"
