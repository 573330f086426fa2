"""Invariant 9: bad input gets INVALID_ARGUMENT naming the field, and writes nothing."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from google.protobuf.empty_pb2 import Empty
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore.domain.queries import EventQuery
from eventstore.server import RunningServer
from eventstore.v1 import eventstore_pb2 as pb
from eventstore.v1 import eventstore_pb2_grpc as pb_grpc
from tests import raw_requests as raw
from tests.support import unique

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


@pytest.fixture
async def stub(server: RunningServer) -> AsyncIterator[pb_grpc.EventStoreAsyncStub]:
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{server.port}", options=[("grpc.max_send_message_length", 64 * MiB)]
    ) as channel:
        yield pb_grpc.EventStoreStub(channel)


def event(**overrides: object) -> pb.EventData:
    fields: dict[str, object] = {
        "event_id": str(uuid.uuid4()),
        "event_type": "Happened",
        "data": b"{}",
    }
    fields.update(overrides)
    return pb.EventData(**fields)  # type: ignore[arg-type]


def request(**overrides: object) -> pb.AppendRequest:
    fields: dict[str, object] = {
        "aggregate_id": unique("bad"),
        "aggregate_type": "Order",
        "expected_version": pb.ExpectedVersion(exact=0),
        "events": [event()],
    }
    fields.update(overrides)
    return pb.AppendRequest(**fields)  # type: ignore[arg-type]


def violations(exc: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    assert status is not None, "INVALID_ARGUMENT must carry google.rpc details"
    fields = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    return fields


CASES: dict[str, tuple[Callable[[], pb.AppendRequest], str]] = {
    "empty aggregate id": (lambda: request(aggregate_id=""), "aggregate_id"),
    "oversized aggregate id": (lambda: request(aggregate_id="é" * 129), "aggregate_id"),
    "control char in id": (lambda: request(aggregate_id="a\x00b"), "aggregate_id"),
    "empty aggregate type": (lambda: request(aggregate_type=""), "aggregate_type"),
    "bad aggregate type": (lambda: request(aggregate_type="9 lives"), "aggregate_type"),
    "long aggregate type": (lambda: request(aggregate_type="T" * 129), "aggregate_type"),
    "no expected version": (lambda: request(expected_version=None), "expected_version"),
    "negative exact": (
        lambda: request(expected_version=pb.ExpectedVersion(exact=-1)),
        "expected_version.exact",
    ),
    "exact at int64 max": (
        lambda: request(expected_version=pb.ExpectedVersion(exact=2**63 - 1)),
        "expected_version.exact",
    ),
    "json nested 1,000 deep": (
        lambda: request(events=[event(data=b"[" * 1000 + b"]" * 1000)]),
        "events[0].data",
    ),
    "no events": (lambda: request(events=[]), "events"),
    "too many events": (lambda: request(events=[event() for _ in range(1001)]), "events"),
    "event over 1 MiB": (
        lambda: request(events=[event(data=b"x" * MiB, content_type="application/octet-stream")]),
        "events[0]",
    ),
    "append over 4 MiB": (
        lambda: request(
            events=[
                event(data=b"x" * (900 * 1024), content_type="application/octet-stream")
                for _ in range(5)
            ]
        ),
        "events",
    ),
    "invalid json": (lambda: request(events=[event(data=b'{"a": ')]), "events[0].data"),
    "empty json": (lambda: request(events=[event(data=b"")]), "events[0].data"),
    "NaN is not json": (lambda: request(events=[event(data=b"NaN")]), "events[0].data"),
    "bad uuid": (lambda: request(events=[event(event_id="not-a-uuid")]), "events[0].event_id"),
    "empty event type": (lambda: request(events=[event(event_type="")]), "events[0].event_type"),
    "bad content type": (
        lambda: request(events=[event(content_type="json")]),
        "events[0].content_type",
    ),
    "reserved metadata": (
        lambda: request(events=[event(metadata={"$principal": "me"})]),
        "events[0].metadata[$principal]",
    ),
    "65 metadata entries": (
        lambda: request(events=[event(), event(metadata={f"k{i}": "v" for i in range(65)})]),
        "events[1].metadata",
    ),
    "repeated event id": (
        lambda: request(events=[event(event_id="6f1c1d2e-0000-4000-8000-000000000001")] * 2),
        "events[1].event_id",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_bad_append_is_refused_naming_the_field(
    stub: pb_grpc.EventStoreAsyncStub, case: str
) -> None:
    make, field = CASES[case]
    bad = make()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Append(bad)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(caught.value)
    if (
        bad.aggregate_id
        and len(bad.aggregate_id.encode()) <= 256
        and "\x00" not in bad.aggregate_id
    ):
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetAggregate(pb.GetAggregateRequest(aggregate_id=bad.aggregate_id))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND, "nothing may be written"


async def test_an_event_of_200_000_metadata_entries_is_refused_and_the_server_serves_on(
    server: RunningServer, stub: pb_grpc.EventStoreAsyncStub
) -> None:
    """Before the entry limit, one such event cost seconds of server CPU (and timed out under
    load); now it is refused from its bytes, and an event at the limit is stored whole."""
    limit = server.settings.limits.max_metadata_entries
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Append(request(events=[event(metadata={str(i): "" for i in range(200_000)})]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(caught.value) == ["events[0].metadata"]
    assert f"the limit is {limit}" in str(caught.value.details())
    metadata = {f"key-{i}": "v" * 100 for i in range(limit)}
    accepted = request(events=[event(metadata=metadata)])
    await stub.Append(accepted)
    read = [
        e
        async for page in stub.ReadAggregate(
            pb.ReadAggregateRequest(aggregate_id=accepted.aggregate_id)
        )
        for e in page.events
    ]
    assert [len(e.metadata) for e in read] == [limit]  # authentication off: no principal added


@pytest.mark.parametrize(
    ("read", "field"),
    [
        (pb.ReadAggregateRequest(aggregate_id=""), "aggregate_id"),
        (pb.ReadAggregateRequest(aggregate_id="a", max_count=-1), "max_count"),
        (pb.ReadAggregateRequest(aggregate_id="a", from_version=-5), "from_version"),
    ],
)
async def test_bad_read_is_refused_naming_the_field(
    stub: pb_grpc.EventStoreAsyncStub, read: pb.ReadAggregateRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.ReadAggregate(read):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(caught.value)


# --- property: whatever arrives, the server answers sensibly and stays up ------------------

AGGREGATES = ["prop-a", "prop-b", "prop-c"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
event_data = st.builds(
    pb.EventData,
    event_id=st.one_of(st.just(""), st.uuids().map(str), st.text(max_size=40)),
    event_type=st.one_of(st.sampled_from(["Created", "Renamed", "a.b-c_d"]), st.text(max_size=20)),
    data=st.one_of(st.binary(max_size=64), json_values.map(lambda v: json.dumps(v).encode())),
    content_type=st.sampled_from(
        ["", "application/json", "text/plain", "application/x+json", "??"]
    ),
    metadata=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
)
expected_versions = st.one_of(
    st.none(),
    st.just(pb.ExpectedVersion(any=Empty())),
    st.just(pb.ExpectedVersion(no_stream=Empty())),
    st.just(pb.ExpectedVersion(stream_exists=Empty())),
    st.integers(min_value=-3, max_value=6).map(lambda v: pb.ExpectedVersion(exact=v)),
)
append_requests = st.builds(
    pb.AppendRequest,
    aggregate_id=st.one_of(st.sampled_from(AGGREGATES), st.text(max_size=300)),
    aggregate_type=st.one_of(st.just("Prop"), st.text(max_size=20)),
    expected_version=expected_versions,
    events=st.lists(event_data, max_size=4),
)


@settings(max_examples=150)
@given(append=append_requests)
async def test_random_appends_only_get_sensible_answers(
    server: RunningServer, stub: pb_grpc.EventStoreAsyncStub, append: pb.AppendRequest
) -> None:
    allowed = {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
    try:
        await stub.Append(append)
        code = grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
    assert code in allowed, f"{code} for {append}"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


# --- valid-but-extreme values: INVALID_ARGUMENT naming the field, never INTERNAL/UNAVAILABLE ---


def _token(body: object) -> str:
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _forged_page_token(cursor: list[object]) -> str:
    return _token({"f": EventQuery().fingerprint(), "a": cursor})


def _time(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


def _from(value: Timestamp) -> pb.QueryEventsRequest:
    query = pb.QueryEventsRequest()
    getattr(query, "from").CopyFrom(value)  # a Python keyword
    return query


YEAR_10000 = 253402300800

EXTREME_QUERIES: dict[str, tuple[pb.QueryEventsRequest, str]] = {
    "from in year 10000": (_from(_time(YEAR_10000)), "from"),
    "to in year 10000": (pb.QueryEventsRequest(to=_time(YEAR_10000)), "to"),
    "negative nanos": (_from(_time(0, -1)), "from.nanos"),
    "nanos of a second or more": (pb.QueryEventsRequest(to=_time(0, 10**9)), "to.nanos"),
    "from 2^62 seconds": (_from(_time(2**62)), "from"),
    "to -2^62 seconds": (pb.QueryEventsRequest(to=_time(-(2**62))), "to"),
    "page token far in time": (
        pb.QueryEventsRequest(page_token=_forged_page_token([10**20, "a", 1])),
        "page_token",
    ),
    "page token with a float": (
        pb.QueryEventsRequest(page_token=_forged_page_token([1.5, "a", 1])),
        "page_token",
    ),
    "page token version beyond int64": (
        pb.QueryEventsRequest(page_token=_forged_page_token([0, "a", 2**64])),
        "page_token",
    ),
    "100,000 event types": (
        pb.QueryEventsRequest(event_types=[f"E{i}" for i in range(100_000)]),
        "event_types",
    ),
    "100,000 aggregate types": (
        pb.QueryEventsRequest(aggregate_types=[f"A{i}" for i in range(100_000)]),
        "aggregate_types",
    ),
}


@pytest.mark.parametrize("case", list(EXTREME_QUERIES))
async def test_extreme_query_is_refused_naming_the_field(
    stub: pb_grpc.EventStoreAsyncStub, case: str
) -> None:
    query, field = EXTREME_QUERIES[case]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.QueryEvents(query)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert field in violations(caught.value)


EXTREME_SUBSCRIPTIONS: dict[str, tuple[pb.SubscribeRequest, str]] = {
    "offset 2^63": (
        pb.SubscribeRequest(
            aggregate_types=["Order"], checkpoint=_token({"v": 1, "k": {"Order": {"0": 2**63}}})
        ),
        "checkpoint",
    ),
    "partition beyond int32": (
        pb.SubscribeRequest(
            aggregate_types=["Order"],
            checkpoint=_token({"v": 1, "k": {"Order": {"2147483648": 0}}}),
        ),
        "checkpoint",
    ),
    "version int64 max": (
        pb.SubscribeRequest(
            aggregate_id="agg-1",
            aggregate_types=["Order"],
            checkpoint=_token({"v": 1, "a": "agg-1", "n": 2**63 - 1}),
        ),
        "checkpoint",
    ),
    "100,000 event types": (
        pb.SubscribeRequest(event_types=[f"E{i}" for i in range(100_000)]),
        "event_types",
    ),
}


@pytest.mark.parametrize("case", list(EXTREME_SUBSCRIPTIONS))
async def test_extreme_subscription_is_refused_naming_the_field(
    stub: pb_grpc.EventStoreAsyncStub, case: str
) -> None:
    subscription, field = EXTREME_SUBSCRIPTIONS[case]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.Subscribe(subscription, timeout=20):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert field in violations(caught.value)


# --- raw bytes: every RPC, on the real stack (the in-process suite runs more examples) ------


@pytest.fixture
async def raw_channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        # The seeds name an aggregate with events (a snapshot needs its version to exist).
        assert await raw.call(channel, raw.RPCS["Append"], raw.RPCS["Append"].seeds[0]) == (
            grpc.StatusCode.OK
        )
        yield channel


def _raw_test_for(name: str) -> object:
    rpc = raw.RPCS[name]

    @settings(max_examples=20)
    @given(request=raw.raw_requests(rpc))
    async def test(raw_channel: grpc.aio.Channel, request: bytes) -> None:
        await raw.check(raw_channel, rpc, request)

    test.__name__ = f"test_raw_{name.replace('.', '_')}_requests_get_allowed_answers"
    return test


for _name in raw.RPCS:
    _test = _raw_test_for(_name)
    globals()[_test.__name__] = _test  # type: ignore[attr-defined]


def _between(start: Timestamp, end: Timestamp) -> pb.QueryEventsRequest:
    query = _from(start)
    query.to.CopyFrom(end)
    return query


#: At the edges of what validation accepts: the answer is an answer, not INTERNAL/UNAVAILABLE.
EDGE_QUERIES: dict[str, pb.QueryEventsRequest] = {
    "the whole timestamp range": _between(
        _time(-62_135_596_800), _time(253_402_300_799, 999_999_999)
    ),
    "page token at the earliest time": pb.QueryEventsRequest(
        page_token=_forged_page_token([-62_135_596_800_000, "a", 2**63 - 1])
    ),
    "page token at the latest time": pb.QueryEventsRequest(
        page_token=_forged_page_token([253_402_300_799_999, "\U0010ffff" * 64, 1])
    ),
    "100 types of each": pb.QueryEventsRequest(
        event_types=[f"E{i}" for i in range(100)],
        aggregate_types=[f"A{i}" for i in range(100)],
        page_size=1000,
        count_total=True,
    ),
}


@pytest.mark.parametrize("case", list(EDGE_QUERIES))
async def test_queries_at_the_edges_are_answered(
    stub: pb_grpc.EventStoreAsyncStub, case: str
) -> None:
    await stub.QueryEvents(EDGE_QUERIES[case])


async def test_reads_and_snapshots_at_the_edges_are_answered(
    stub: pb_grpc.EventStoreAsyncStub,
) -> None:
    aggregate = unique("edge")
    await stub.Append(request(aggregate_id=aggregate))
    edge = {"aggregate_id": aggregate, "from_version": 2**63 - 1, "max_count": 2**63 - 1}
    forwards = pb.ReadAggregateRequest(**edge)  # type: ignore[arg-type]
    assert [m async for m in stub.ReadAggregate(forwards)] == []
    backwards = pb.ReadAggregateRequest(direction=pb.DIRECTION_BACKWARDS, **edge)  # type: ignore[arg-type]
    pages = [m async for m in stub.ReadAggregate(backwards)]
    assert [e.version for page in pages for e in page.events] == [1]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetSnapshot(pb.GetSnapshotRequest(aggregate_id=aggregate, max_version=2**63 - 1))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    await stub.SaveSnapshot(
        pb.SaveSnapshotRequest(
            aggregate_id=aggregate, version=1, state_type="S", schema_version=2**31 - 1
        )
    )


async def test_subscriptions_at_the_edges_are_answered(
    stub: pb_grpc.EventStoreAsyncStub,
) -> None:
    aggregate = unique("edge")
    await stub.Append(request(aggregate_id=aggregate))
    for subscription in (
        pb.SubscribeRequest(
            aggregate_id=aggregate,
            checkpoint=_token({"v": 1, "a": aggregate, "n": 2**63 - 2}),
        ),
        pb.SubscribeRequest(
            aggregate_types=[f"Edge{i}" for i in range(100)],
            checkpoint=_token({"v": 1, "k": {"Edge0": {"0": 2**63 - 1}}}),
        ),
    ):
        async for first in stub.Subscribe(subscription, timeout=60):
            assert first.WhichOneof("message") == "caught_up"
            break
