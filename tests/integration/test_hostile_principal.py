"""A hostile principal, against one server with authentication on (a permissions file): no
request of one principal changes or reveals anything of a type it has no grant for, and what
it can consume is bounded before the server or another principal suffers.

The principals are those of principals.py: `orders` is the victim (Order); `payments` may see
and write Payment only, `billing` may append Invoice and see no type at all; `auditor` reads,
queries and subscribes to every type ("*").
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2, text_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from eventstore.client import (
    ClientError,
    Event,
    EventIdReusedError,
    EventStoreClient,
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceExhaustedError,
    RetryPolicy,
)
from eventstore.config import CassandraSettings, LimitSettings, ServerSettings
from eventstore.domain.events import Direction, RecordedEvent
from eventstore.domain.snapshots import Snapshot
from eventstore.search.setup import make_client
from eventstore.server import RunningServer
from eventstore.storage.cassandra import CassandraEventStorage
from eventstore.v1 import eventstore_pb2 as pb
from tests.integration.conftest import StartServer
from tests.integration.principals import (
    KEYS,
    Connect,
    default_keys,
    first_message,
    permissions_yaml,
    refused,
)
from tests.integration.test_indexer import IndexerProcess
from tests.integration.test_restart import ServerProcess, free_port
from tests.integration.test_subscribe import Collector
from tests.support import read_topic

pytestmark = pytest.mark.integration

VICTIM = "order-1"
#: An id no aggregate has: what every answer about the victim must look like.
ABSENT = "order-404"

# --- Changes nothing, reveals nothing: every RPC, table-driven --------------------------------


@dataclass(frozen=True)
class Probe:
    """One request a principal without a grant for Order can make about an Order aggregate:
    `build(aggregate_id, event_ids)` with the aggregate's event ids (made up for an absent one)."""

    name: str
    method: str
    build: Callable[[str, list[str]], Any]
    streaming: bool = False
    #: a bidirectional stream: the request is its first (and only) message
    bidirectional: bool = False


def _event(event_id: str = "", data: bytes = b"{}") -> pb.EventData:
    return pb.EventData(event_id=event_id, event_type="Placed", data=data)


ANY = pb.ExpectedVersion(any=empty_pb2.Empty())

PROBES = [
    Probe(
        "append to its type",
        "Append",
        lambda a, _: pb.AppendRequest(
            aggregate_id=a, aggregate_type="Order", expected_version=ANY, events=[_event()]
        ),
    ),
    *(
        Probe(
            f"append expecting {name}",
            "Append",
            lambda a, _, expected=expected: pb.AppendRequest(  # type: ignore[misc]
                aggregate_id=a,
                aggregate_type="Order",
                expected_version=pb.ExpectedVersion(**expected),
                events=[_event()],
            ),
        )
        for name, expected in (
            ("its version", {"exact": 2}),
            ("no stream", {"no_stream": empty_pb2.Empty()}),
            ("a stream", {"stream_exists": empty_pb2.Empty()}),
        )
    ),
    Probe(
        "append resending its event ids and content",
        "Append",
        lambda a, ids: pb.AppendRequest(
            aggregate_id=a,
            aggregate_type="Order",
            expected_version=ANY,
            events=[_event(ids[0], b'{"n":1}'), _event(ids[1], b'{"n":2}')],
        ),
    ),
    Probe("read forwards", "ReadAggregate", lambda a, _: pb.ReadAggregateRequest(aggregate_id=a)),
    Probe(
        "read backwards, one",
        "ReadAggregate",
        lambda a, _: pb.ReadAggregateRequest(
            aggregate_id=a, direction=pb.DIRECTION_BACKWARDS, max_count=1
        ),
    ),
    Probe(
        "read past its end",
        "ReadAggregate",
        lambda a, _: pb.ReadAggregateRequest(aggregate_id=a, from_version=99),
    ),
    Probe(
        "read upcast to the latest schemas",
        "ReadAggregate",
        lambda a, _: pb.ReadAggregateRequest(aggregate_id=a, schema_view=pb.SCHEMA_VIEW_LATEST),
    ),
    Probe("describe", "GetAggregate", lambda a, _: pb.GetAggregateRequest(aggregate_id=a)),
    # Schemas are per type: the aggregate id does not enter, and the type is refused alike.
    Probe(
        "register a schema for its type",
        "RegisterSchema",
        lambda a, _: pb.RegisterSchemaRequest(
            aggregate_type="Order",
            event_type="Placed",
            format=pb.SCHEMA_FORMAT_JSON_SCHEMA,
            document=b'{"type": "object"}',
        ),
    ),
    Probe(
        "list its type's schemas",
        "ListSchemas",
        lambda a, _: pb.ListSchemasRequest(aggregate_type="Order"),
    ),
    Probe(
        "fetch its type's schema",
        "GetSchema",
        lambda a, _: pb.GetSchemaRequest(aggregate_type="Order", event_type="Placed"),
    ),
    Probe("latest snapshot", "GetSnapshot", lambda a, _: pb.GetSnapshotRequest(aggregate_id=a)),
    Probe(
        "snapshot at a version",
        "GetSnapshot",
        lambda a, _: pb.GetSnapshotRequest(aggregate_id=a, max_version=1),
    ),
    Probe(
        "save a snapshot",
        "SaveSnapshot",
        lambda a, _: pb.SaveSnapshotRequest(
            aggregate_id=a, version=1, state=b"{}", state_type="hostile"
        ),
    ),
    Probe(
        "subscribe to it",
        "Subscribe",
        lambda a, _: pb.SubscribeRequest(aggregate_id=a),
        streaming=True,
    ),
    Probe(
        "subscribe to it from the end",
        "Subscribe",
        lambda a, _: pb.SubscribeRequest(aggregate_id=a, from_end=empty_pb2.Empty()),
        streaming=True,
    ),
    Probe(
        "subscribe to it and its type",
        "Subscribe",
        lambda a, _: pb.SubscribeRequest(aggregate_id=a, aggregate_types=["Order"]),
        streaming=True,
    ),
    Probe(
        "query it, counting",
        "QueryEvents",
        lambda a, _: pb.QueryEventsRequest(aggregate_id=a, count_total=True),
    ),
    Probe(
        "ask whether its event is searchable",
        "QueryEvents",
        lambda a, ids: pb.QueryEventsRequest(visible_event_id=ids[0], page_size=1),
    ),
    Probe(
        "query its type",
        "QueryEvents",
        lambda a, _: pb.QueryEventsRequest(aggregate_types=["Order"], aggregate_id=a),
    ),
    Probe(
        "join a group of its type, named after it",
        "SubscribeGroup",
        lambda a, _: pb.SubscribeGroupRequest(
            join=pb.JoinGroup(group=a, aggregate_types=["Order"])
        ),
        bidirectional=True,
    ),
    Probe(
        "list the parked events of a group named after it",
        "ListParked",
        lambda a, _: pb.ListParkedRequest(group=a),
    ),
    Probe(
        "replay the parked events of a group named after it",
        "ReplayParked",
        lambda a, _: pb.ReplayParkedRequest(group=a),
    ),
    # Erasure is not per type: without the grant, a subject named like it is refused alike.
    Probe(
        "erase a data subject named after it",
        "EraseSubject",
        lambda a, _: pb.EraseSubjectRequest(subject=a),
    ),
]


def test_the_probes_cover_every_rpc() -> None:
    rpcs = {m.name for m in pb.DESCRIPTOR.services_by_name["EventStore"].methods}
    assert {probe.method for probe in PROBES} == rpcs


async def answer(
    channel: grpc.aio.Channel, key: str, probe: Probe, aggregate_id: str, event_ids: list[str]
) -> str:
    """Everything the caller gets (messages, status code, message and details; the request
    id aside), as text, with the aggregate and event ids replaced by placeholders."""
    request = probe.build(aggregate_id, event_ids)
    path = f"/eventstore.v1.EventStore/{probe.method}"
    metadata = (("authorization", f"Bearer {key}"),)
    shown: list[str] = []
    try:
        if probe.bidirectional:
            stream = channel.stream_stream(
                path,
                request_serializer=type(request).SerializeToString,
                response_deserializer=_response_type(probe.method).FromString,
            )(iter([request]), metadata=metadata, timeout=30)
            async for message in stream:
                shown.append(_text(message))
                if len(shown) == 3:
                    stream.cancel()
                    break
        elif probe.streaming:
            call = channel.unary_stream(
                path,
                request_serializer=type(request).SerializeToString,
                response_deserializer=_response_type(probe.method).FromString,
            )(request, metadata=metadata, timeout=30)
            async for message in call:
                shown.append(_text(message))
                if len(shown) == 3:  # a stream that opened: enough to compare
                    call.cancel()
                    break
        else:
            response = await channel.unary_unary(
                path,
                request_serializer=type(request).SerializeToString,
                response_deserializer=_response_type(probe.method).FromString,
            )(request, metadata=metadata, timeout=30)
            shown.append(_text(response))
    except grpc.aio.AioRpcError as error:
        shown.append(f"{error.code().name}: {error.details()}")
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        if status is not None:
            shown += [_text(d) for d in status.details if not d.Is(_REQUEST_INFO)]
    text = "\n".join(shown)
    for i, event_id in enumerate(event_ids):
        text = text.replace(event_id, f"<event {i}>")
    return text.replace(aggregate_id, "<id>")


_REQUEST_INFO = error_details_pb2.RequestInfo.DESCRIPTOR


def _response_type(method: str) -> Any:
    descriptor = pb.DESCRIPTOR.services_by_name["EventStore"].methods_by_name[method]
    return getattr(pb, descriptor.output_type.name)


def _text(message: Any) -> str:
    if isinstance(message, pb.QueryEventsResponse) and message.HasField("freshness"):
        # When the indexer last reported (every half second here, all partitions at once):
        # it differs between two calls and says nothing of a type. What it had indexed of
        # which types is compared.
        message.freshness.ClearField("reported_at")
    return text_format.MessageToString(message, as_one_line=True)


@dataclass(frozen=True)
class VictimState:
    events: list[Any]
    aggregate: Any
    #: every field, its state's bytes and time included
    snapshot: Snapshot
    #: at or below version 1, where a hostile SaveSnapshot would have put one
    earlier_snapshot: Snapshot | None
    #: OpenSearch documents of Order events: index, _id, _source (not _version: indexing is
    #: at least once, and a re-delivered record rewrites the same document)
    documents: list[tuple[Any, ...]]
    #: the distinct records of the Order topic (publication is at least once: a record may
    #: come twice, but no other record may appear)
    records: set[bytes]


async def victim_state(
    storage: CassandraEventStorage, running: RunningServer, auditor: EventStoreClient
) -> VictimState:
    settings = running.settings
    snapshot = await auditor.get_snapshot(VICTIM)
    assert snapshot is not None

    def documents() -> list[tuple[Any, ...]]:
        client = make_client(settings.opensearch)
        try:
            client.indices.refresh(index=settings.opensearch.alias)
            found = client.search(
                index=settings.opensearch.alias,
                body={
                    "size": 1000,
                    "query": {
                        "bool": {
                            "should": [
                                {"term": {"aggregate_id": VICTIM}},
                                {"term": {"aggregate_type": "Order"}},
                            ]
                        }
                    },
                },
            )
        finally:
            client.close()
        return sorted((h["_index"], h["_id"], repr(h["_source"])) for h in found["hits"]["hits"])

    def records() -> set[bytes]:
        topic = settings.kafka.topic("Order")
        found = read_topic(settings.kafka.bootstrap, topic, expected=2)
        return {bytes(record.value() or b"") for record in found}

    return VictimState(
        events=await storage.read(VICTIM, 1, Direction.FORWARDS, 1000),
        aggregate=await storage.describe(VICTIM),
        snapshot=snapshot,
        earlier_snapshot=await auditor.get_snapshot(VICTIM, 1),
        documents=await asyncio.to_thread(documents),
        records=await asyncio.to_thread(records),
    )


async def test_no_request_changes_or_reveals_anything_of_a_type_without_a_grant(
    connect: Connect,
    secure_server: RunningServer,
    cassandra_storage: CassandraEventStorage,
    tmp_path: Path,
) -> None:
    settings = secure_server.settings
    indexer = IndexerProcess(settings.kafka, settings.opensearch, tmp_path / "indexer.log")
    await indexer.start()
    orders = connect(KEYS["orders"], retry=RetryPolicy())
    auditor = connect(KEYS["auditor"], retry=RetryPolicy())
    payments = connect(KEYS["payments"], retry=RetryPolicy())
    try:
        # The hostile principals' own data first, then the victim's: the victim's is newer
        # than anything they may see (so freshness would show it).
        await payments.append("payment-1", "Payment", [Event("Captured", {})])
        placed, paid = Event("Placed", {"n": 1}), Event("Paid", {"n": 2})
        await orders.append(VICTIM, "Order", [placed, paid])
        await orders.save_snapshot(VICTIM, 2, b'{"total": 3}', "order")
        victim_ids = [str(placed.event_id), str(paid.event_id)]
        deadline = time.monotonic() + 90
        while len(await auditor.query_all()) < 3:
            assert time.monotonic() < deadline, "the indexer did not index every event"
            await asyncio.sleep(0.3)
        before = await victim_state(cassandra_storage, secure_server, auditor)
        assert len(before.events) == 2
        assert len(before.documents) == 2
        assert before.earlier_snapshot is None
        assert len(before.records) == 2
        made_up = [str(uuid.uuid4()), str(uuid.uuid4())]
        address = f"127.0.0.1:{secure_server.port}"
        async with grpc.aio.insecure_channel(address) as channel:
            for hostile in ("payments", "billing"):
                for probe in PROBES:
                    about_victim = await answer(channel, KEYS[hostile], probe, VICTIM, victim_ids)
                    about_nothing = await answer(channel, KEYS[hostile], probe, ABSENT, made_up)
                    assert about_victim == about_nothing, (hostile, probe.name)
                    # Refused, or told of nothing: never the victim's data.
                    assert "Placed" not in about_victim, (hostile, probe.name)
                    assert '\\"n\\"' not in about_victim, (hostile, probe.name)
        # Writes a hostile principal may make: its own type at the victim's id (refused:
        # the id is taken, which shows, but not by what type), and the victim's event ids
        # and content in an aggregate of its own type (accepted: ids are per aggregate).
        own = {"payments": ("Payment", "payment-2"), "billing": ("Invoice", "invoice-2")}
        for hostile, (own_type, own_id) in own.items():
            client = connect(KEYS[hostile])
            taken = await refused(client.append(VICTIM, own_type, [placed, paid]))
            assert isinstance(taken, InvalidArgumentError), taken
            assert "Order" not in taken.message
            await client.append(own_id, own_type, [placed, paid])
        for _, own_id in own.values():  # the copies are indexed (beside the victim's?)
            while len(await auditor.query_all(aggregate_id=own_id)) < 2:
                assert time.monotonic() < deadline, "the indexer did not index the copies"
                await asyncio.sleep(0.3)
        after = await victim_state(cassandra_storage, secure_server, auditor)
        assert after == before
    finally:
        await indexer.kill()


async def test_a_forbidden_append_is_denied_naming_operation_and_type_and_writes_nothing(
    connect: Connect, cassandra_storage: CassandraEventStorage
) -> None:
    orders = connect(KEYS["orders"])
    denied = await refused(orders.append("payment-1", "Payment", [Event("Captured", {})]))
    assert isinstance(denied, PermissionDeniedError)
    assert denied.reason == {
        "principal": "orders",
        "operation": "append",
        "aggregate_type": "Payment",
    }
    assert "'orders' may not append 'Payment'" in denied.message
    assert await cassandra_storage.describe("payment-1") is None
    auditor = connect(KEYS["auditor"])
    assert isinstance(
        await refused(auditor.append("order-9", "Order", [Event("Placed", {})])),
        PermissionDeniedError,
    )
    assert await cassandra_storage.describe("order-9") is None
    # Reading follows the read grants, by the type the aggregate really has.
    payments = connect(KEYS["payments"])
    await payments.append("payment-1", "Payment", [Event("Captured", {})])
    await orders.append("order-1", "Order", [Event("Placed", {})])
    assert len(await orders.read_all("payment-1")) == 1  # orders may read Payment
    # payments may not see Orders at all: an Order is answered as an unknown id is, so neither
    # its existence nor its type shows.
    calls: list[Callable[[str], Awaitable[object]]] = [
        lambda a: payments.read_all(a),
        lambda a: payments.read_all(a, from_version=99),  # past the end: still not theirs
        lambda a: payments.get_aggregate(a),
        lambda a: first_message(payments, aggregate_id=a),
        lambda a: first_message(payments, aggregate_id=a, aggregate_types=["Order"]),
    ]
    await orders.save_snapshot("order-1", 1, b"{}", "state")

    async def answer(call: Callable[[str], Awaitable[object]], aggregate_id: str) -> str:
        error = await refused(call(aggregate_id))
        details = [
            error._detail(kind)
            for kind in (
                error_details_pb2.ErrorInfo,
                error_details_pb2.ResourceInfo,
                error_details_pb2.BadRequest,
            )
        ]
        shown = f"{error.code.name} {error.message} {details}"
        return shown.replace(aggregate_id, "<id>")

    for i, call in enumerate(calls):
        hidden = await answer(call, "order-1")
        assert hidden == await answer(call, "order-404")
        assert hidden.startswith((*("NOT_FOUND",) * 3, "INVALID", "PERMISSION")[i]), hidden
    assert await payments.get_snapshot("order-1") is None  # as for an id without snapshots
    # Snapshots: writing one is as strong as appending; reading follows read grants.
    assert isinstance(
        await refused(orders.save_snapshot("payment-1", 1, b"{}", "state")),
        PermissionDeniedError,
    )
    await payments.save_snapshot("payment-1", 1, b"{}", "state")
    assert (await orders.get_snapshot("payment-1")) is not None


async def test_resending_committed_ids_tells_nothing_to_another_type_and_needs_same_content(
    connect: Connect, cassandra_storage: CassandraEventStorage
) -> None:
    orders, payments = connect(KEYS["orders"]), connect(KEYS["payments"])
    committed = [Event("Placed", {"n": 1}), Event("Paid", {"n": 2})]
    original = await orders.append("order-1", "Order", committed)
    # payments may append Payments; resending the Order's ids under its own type must not
    # answer "already committed" with the Order's versions and time, nor name its type.
    stolen = await refused(payments.append("order-1", "Payment", committed))
    assert isinstance(stolen, InvalidArgumentError), stolen
    assert stolen.fields == ["aggregate_type"]
    assert "Order" not in stolen.message
    # The same ids with other content are no retry: refused, nothing written.
    altered = [committed[0], replace(committed[1], data={"n": 3})]
    conflict = await refused(orders.append("order-1", "Order", altered))
    assert isinstance(conflict, EventIdReusedError), conflict
    assert conflict.code.name == "FAILED_PRECONDITION"
    assert conflict.reason["field"] == "events[1]"
    retry = await orders.append("order-1", "Order", committed)  # the very same: the original
    assert (retry.already_committed, retry.first_version, retry.committed_at) == (
        True,
        original.first_version,
        original.committed_at,
    )
    stored = await cassandra_storage.read("order-1", 1, Direction.FORWARDS, 10)
    assert [(e.event_type, e.data) for e in stored] == [
        ("Placed", b'{"n":1}'),
        ("Paid", b'{"n":2}'),
    ]


async def test_reusing_another_principals_event_id_replaces_none_of_its_documents(
    connect: Connect, secure_server: RunningServer, tmp_path: Path
) -> None:
    settings = secure_server.settings
    indexer = IndexerProcess(settings.kafka, settings.opensearch, tmp_path / "indexer.log")
    await indexer.start()
    shared = uuid.uuid4()
    # Retries as clients do by default: while the indexer creates the first index, a search
    # may briefly get UNAVAILABLE.
    orders = connect(KEYS["orders"], retry=RetryPolicy())
    payments = connect(KEYS["payments"], retry=RetryPolicy())
    auditor = connect(KEYS["auditor"], retry=RetryPolicy())

    async def found(client: EventStoreClient, aggregate_id: str) -> list[tuple[str, str, str]]:
        events = await client.query_all(aggregate_id=aggregate_id)
        return [(e.aggregate_id, e.event_type, e.data.decode()) for e in events]

    async def indexed(client: EventStoreClient, aggregate_id: str) -> None:
        deadline = time.monotonic() + 90
        while not await found(client, aggregate_id):
            assert time.monotonic() < deadline, f"{aggregate_id} was not indexed"
            await asyncio.sleep(0.3)

    try:
        await orders.append("order-1", "Order", [Event("Placed", {"n": 1}, event_id=shared)])
        await indexed(orders, "order-1")
        # Another principal, in an aggregate of its own type, with the same event id.
        await payments.append(
            "payment-1", "Payment", [Event("Captured", {"n": 2}, event_id=shared)]
        )
        await indexed(payments, "payment-1")
        await asyncio.sleep(1.5)  # a later (wrong) overwrite would be searchable by now
        assert await found(orders, "order-1") == [("order-1", "Placed", '{"n":1}')]
        assert await found(payments, "payment-1") == [("payment-1", "Captured", '{"n":2}')]
        everything = await auditor.query_all()
        assert sorted((e.aggregate_id, e.event_id) for e in everything) == [
            ("order-1", shared),
            ("payment-1", shared),
        ]
    finally:
        await indexer.kill()


async def test_query_freshness_tells_nothing_of_types_the_caller_may_not_query(
    connect: Connect, secure_server: RunningServer, tmp_path: Path
) -> None:
    """The indexers' lag and newest indexed time once covered every type: a principal limited
    to Payments learnt when Orders were written. Now only its types' partitions count."""
    settings = secure_server.settings
    indexer = IndexerProcess(settings.kafka, settings.opensearch, tmp_path / "indexer.log")
    await indexer.start()
    payments = connect(KEYS["payments"], retry=RetryPolicy())
    orders = connect(KEYS["orders"], retry=RetryPolicy())
    auditor = connect(KEYS["auditor"], retry=RetryPolicy())

    async def fresh_through(client: EventStoreClient, event_id: uuid.UUID) -> datetime:
        deadline = time.monotonic() + 90
        while True:
            page = await client.query_events(visible_event_id=event_id, page_size=1)
            through = page.freshness.indexed_through
            if page.freshness.event_visible and through is not None:
                return through
            assert time.monotonic() < deadline, "not indexed and reported in time"
            await asyncio.sleep(0.3)

    try:
        paid = Event("Captured", {})
        await payments.append("payment-fresh", "Payment", [paid])
        payments_through = await fresh_through(payments, paid.event_id)
        await asyncio.sleep(1.2)  # the Order is recorded clearly later
        placed = Event("Placed", {})
        order = await orders.append("order-fresh", "Order", [placed])
        deadline = time.monotonic() + 90
        while await fresh_through(auditor, placed.event_id) < order.committed_at:
            assert time.monotonic() < deadline, "the indexer never reported the Order"
            await asyncio.sleep(0.3)
        # The auditor sees the Order's time; payments still sees only its own.
        page = await payments.query_events(page_size=1)
        assert page.freshness.indexed_through is not None
        assert page.freshness.indexed_through < order.committed_at
        assert page.freshness.indexed_through >= payments_through
    finally:
        await indexer.kill()


# --- Bounded: quotas, defaults and refusals before any backend work -----------------------


async def test_a_principal_over_its_rate_is_refused_while_others_keep_their_latency(
    connect: Connect,
) -> None:
    noisy = connect(KEYS["payments"])  # 20 events/s
    quiet = connect(KEYS["orders"])  # no quota
    outcomes: list[str] = []
    retry_after: list[float] = []

    measuring = True

    async def flood(worker: int) -> None:
        # As fast as it can, ignoring retry-after: the worst neighbour.
        while measuring:
            try:
                await noisy.append(f"payment-{worker}", "Payment", [Event("Captured", {})])
                outcomes.append("ok")
            except ResourceExhaustedError as exc:
                outcomes.append("refused")
                retry_after.append(exc.retry_after_s or 0)

    async def measure(count: int) -> list[float]:
        latencies = []
        for i in range(count):
            started = time.perf_counter()
            await quiet.append(f"order-{i % 5}", "Order", [Event("Placed", {})])
            latencies.append(time.perf_counter() - started)
        return latencies

    baseline = await measure(20)
    started = time.monotonic()
    flooding = [asyncio.create_task(flood(w)) for w in range(8)]
    during = await measure(100)
    measuring = False
    await asyncio.gather(*flooding)
    elapsed = time.monotonic() - started
    admitted = outcomes.count("ok")
    assert outcomes.count("refused") > 0
    # 20 events/s with a burst of 20 (+1 in flight per worker when it ended).
    assert admitted <= 20 + 20 * elapsed + 8, (admitted, elapsed)
    assert all(0 < delay <= 1.0 for delay in retry_after)
    median_before, median_during = statistics.median(baseline), statistics.median(during)
    p99_during = statistics.quantiles(during, n=100)[98]
    print(
        f"quiet principal append median {median_before * 1000:.1f} ms before, "
        f"{median_during * 1000:.1f} ms during the flood (p99 {p99_during * 1000:.1f} ms); "
        f"noisy: {admitted} admitted, {outcomes.count('refused')} refused in {elapsed:.1f} s"
    )
    assert median_during < 0.2, median_during  # the product's latency target
    # A client that waits as told gets every append in, at the principal's rate.
    patient = connect(KEYS["payments"], retry=RetryPolicy(attempts=20))
    started = time.monotonic()
    for i in range(40):
        await patient.append(f"payment-{i % 8}", "Payment", [Event("Captured", {})])
    took = time.monotonic() - started
    print(f"40 appends at 20 events/s through retry-after: {took:.2f} s")
    assert took > 0.9  # 40 events at 20/s, from a bucket that starts empty or in debt


async def test_concurrent_subscriptions_are_limited_per_principal(connect: Connect) -> None:
    payments = connect(KEYS["payments"])  # at most 1
    first = Collector(payments.subscribe())
    try:
        await first.wait_for(lambda c: len(c.caught_up_at) > 0)
        denied = await refused(first_message(payments))
        assert isinstance(denied, ResourceExhaustedError)
        assert denied.retry_after_s is not None
        assert denied.retry_after_s > 0
        # Someone else's subscriptions are not counted against it.
        assert await first_message(connect(KEYS["orders"])) is not None
    finally:
        await first.stop()
    deadline = time.monotonic() + 10
    while True:  # the server sees the cancelled stream end shortly after
        try:
            assert await first_message(payments) is not None
            break
        except ResourceExhaustedError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)


async def test_subscriptions_are_bounded_for_a_principal_without_a_quota(
    server_settings: ServerSettings, start_server: StartServer, permissions: Path
) -> None:
    """Each subscription holds a Kafka consumer (threads, sockets, memory): a principal with no
    quota in the permissions file is bounded by EVENTSTORE_LIMIT_MAX_SUBSCRIPTIONS_PER_PRINCIPAL
    (they were unlimited: 100 idle ones took the server from 24 to 427 threads)."""
    running = await start_server(
        server_settings.model_copy(
            update={
                "auth_disabled": False,
                "permissions_file": permissions,
                "limits": LimitSettings(max_subscriptions_per_principal=2),
            }
        )
    )
    address = f"127.0.0.1:{running.port}"
    orders = EventStoreClient(
        address, api_key=KEYS["orders"], retry=RetryPolicy(attempts=1), timeout_s=10
    )
    auditor = EventStoreClient(
        address, api_key=KEYS["auditor"], retry=RetryPolicy(attempts=1), timeout_s=10
    )
    held = [Collector(orders.subscribe()) for _ in range(2)]
    try:
        for collector in held:
            await collector.wait_for(lambda c: len(c.caught_up_at) > 0)
        denied = await refused(first_message(orders))
        assert isinstance(denied, ResourceExhaustedError)
        assert await first_message(auditor) is not None  # its own bound, not orders'
    finally:
        for collector in held:
            await collector.stop()
        await orders.close()
        await auditor.close()


async def test_a_requests_quota_limits_every_rpc_of_its_principal_only(
    server_settings: ServerSettings, start_server: StartServer, tmp_path: Path
) -> None:
    """Quotas once limited appended events and subscriptions only: a principal could flood
    reads and queries. `requests_per_s` counts every call, refused before any backend work."""
    path = tmp_path / "permissions.yaml"
    text = permissions_yaml(default_keys(), {})
    limited = "    append: [Invoice]\n"
    assert limited in text
    text = text.replace(
        limited,
        limited + "    read: [Invoice]\n    quotas: {requests_per_s: 2, requests_burst: 5}\n",
    )
    path.write_text(text)
    running = await start_server(
        server_settings.model_copy(update={"auth_disabled": False, "permissions_file": path})
    )
    address = f"127.0.0.1:{running.port}"
    one_try = RetryPolicy(attempts=1)
    async with (
        EventStoreClient(address, api_key=KEYS["billing"], retry=one_try) as billing,
        EventStoreClient(address, api_key=KEYS["orders"], retry=one_try) as orders,
    ):
        outcomes: list[ResourceExhaustedError | None] = []
        for _ in range(10):  # reads of an aggregate that does not exist, as fast as it can
            try:
                await billing.get_aggregate("invoice-none")
            except ResourceExhaustedError as exc:
                outcomes.append(exc)
            except ClientError:
                outcomes.append(None)
        refused = [o for o in outcomes if o is not None]
        assert len(outcomes) - len(refused) <= 6, "a burst of 5 (and what refilled meanwhile)"
        assert refused, "the flood was never refused"
        assert all(r.retry_after_s and r.retry_after_s > 0 for r in refused)
        for i in range(10):  # another principal is not counted against it
            await orders.append(f"order-rate-{i}-{uuid.uuid4().hex}", "Order", [Event("P", {})])


def with_quotas(principal: str, quotas: str) -> str:
    """The principals' file, with `quotas` (a YAML mapping) for `principal`."""
    text = permissions_yaml(default_keys(), {})
    start = text.index(f"  {principal}:\n")
    end = text.find("\n  ", start + 3)
    entry = text[start:] if end < 0 else text[start : end + 1]
    assert "quotas" not in entry, "give it a principal without quotas"
    return text.replace(entry, entry + f"    quotas: {quotas}\n")


def quota_of(error: ResourceExhaustedError) -> tuple[str, str]:
    """The quota a refusal names (ErrorInfo), and what its QuotaFailure says of it."""
    info = error._detail(error_details_pb2.ErrorInfo)
    failure = error._detail(error_details_pb2.QuotaFailure)
    assert info is not None
    assert failure is not None
    return info.metadata["quota"], failure.violations[0].description


async def refusals(calls: list[Awaitable[object]]) -> list[ResourceExhaustedError | None]:
    """Each call in turn: its quota refusal, or None when the quota admitted it (whatever the
    answer then)."""
    outcomes: list[ResourceExhaustedError | None] = []
    for call in calls:
        try:
            await call
            outcomes.append(None)
        except ResourceExhaustedError as exc:
            outcomes.append(exc)
        except ClientError:
            outcomes.append(None)
    return outcomes


async def test_an_append_bytes_quota_refuses_before_anything_is_written(
    server_settings: ServerSettings,
    start_server: StartServer,
    tmp_path: Path,
    cassandra_storage: CassandraEventStorage,
) -> None:
    """Quotas counted events and calls only: one principal could append 4 MiB per call at its
    full rate. `append_bytes_per_s` counts each Append request's bytes as received."""
    path = tmp_path / "permissions.yaml"
    path.write_text(
        with_quotas("billing", "{append_bytes_per_s: 20000, append_bytes_burst: 100000}")
    )
    running = await start_server(
        server_settings.model_copy(update={"auth_disabled": False, "permissions_file": path})
    )
    address = f"127.0.0.1:{running.port}"
    one_try = RetryPolicy(attempts=1)
    # About 80 kB a request: the burst admits two (the second into debt), and the bucket is
    # positive again only three seconds later (at 20 kB/s), however slow the machine.
    big = {"blob": "x" * 80_000}
    async with (
        EventStoreClient(address, api_key=KEYS["billing"], retry=one_try) as billing,
        EventStoreClient(address, api_key=KEYS["orders"], retry=one_try) as orders,
    ):
        ids = [f"invoice-{i}" for i in range(6)]
        outcomes = await refusals(
            [billing.append(i, "Invoice", [Event("Issued", big)]) for i in ids]
        )
        assert [o is None for o in outcomes] == [True] * 2 + [False] * 4, outcomes
        for refusal in outcomes[2:]:
            assert refusal is not None
            assert quota_of(refusal) == ("append_bytes_per_s", "append_bytes_per_s is 20000")
            assert refusal.retry_after_s is not None
            assert 1 < refusal.retry_after_s <= 3.1
        for aggregate_id, outcome in zip(ids, outcomes, strict=True):
            assert (await cassandra_storage.describe(aggregate_id) is None) is (outcome is not None)
        # The same principal gets in again when told; another one never waited.
        assert outcomes[-1] is not None
        await asyncio.sleep(outcomes[-1].retry_after_s or 0)
        await billing.append("invoice-small", "Invoice", [Event("Issued", {})])
        for i in range(5):
            await orders.append(f"order-{i}", "Order", [Event("Placed", big)])


async def test_server_defaults_bound_principals_without_quotas_of_their_own(
    server_settings: ServerSettings,
    start_server: StartServer,
    tmp_path: Path,
    cassandra_storage: CassandraEventStorage,
) -> None:
    """Rate quotas were opt-in: a principal without one in the permissions file could make
    every call it liked. EVENTSTORE_LIMIT_DEFAULT_* bound it; its own quotas win."""
    path = tmp_path / "permissions.yaml"
    path.write_text(
        with_quotas("billing", "{requests_per_s: 1000, append_bytes_per_s: 10000000}").replace(
            "    append: [Invoice]\n", "    append: [Invoice]\n    read: [Invoice]\n"
        )
    )
    limits = LimitSettings(default_requests_per_s=3, default_append_bytes_per_s=50_000)
    running = await start_server(
        server_settings.model_copy(
            update={"auth_disabled": False, "permissions_file": path, "limits": limits}
        )
    )
    address = f"127.0.0.1:{running.port}"
    one_try = RetryPolicy(attempts=1)
    big = {"blob": "x" * 30_000}
    async with (
        EventStoreClient(address, api_key=KEYS["orders"], retry=one_try) as orders,
        EventStoreClient(address, api_key=KEYS["payments"], retry=one_try) as payments,
        EventStoreClient(address, api_key=KEYS["billing"], retry=one_try) as billing,
    ):
        # orders has no quota: 3 calls a second (a burst of 3), any RPC.
        at_once = await asyncio.gather(
            *(refusals([orders.get_aggregate(f"order-{i}")]) for i in range(20))
        )
        refused_calls = [o for (o,) in at_once if o is not None]
        assert len(refused_calls) >= 10, at_once
        assert {quota_of(r) for r in refused_calls} == {("requests_per_s", "requests_per_s is 3")}
        # payments has an events quota of its own, not a bytes one: 50,000 bytes a second. A
        # 200 kB append is admitted into debt; the bucket is positive again three seconds later.
        huge = {"blob": "x" * 200_000}
        ids = [f"payment-{i}" for i in range(3)]
        outcomes = await refusals([payments.append(i, "Payment", [Event("P", huge)]) for i in ids])
        assert [o is None for o in outcomes] == [True, False, False], outcomes
        for aggregate_id, refusal in zip(ids[1:], outcomes[1:], strict=True):
            assert refusal is not None
            assert quota_of(refusal)[0] == "append_bytes_per_s"
            assert await cassandra_storage.describe(aggregate_id) is None
        # billing's own quotas are higher than the defaults: none of this is refused.
        for i in range(10):
            await billing.append(f"invoice-{i}", "Invoice", [Event("Issued", big)])
            with pytest.raises(ClientError) as absent:
                await billing.get_aggregate(f"invoice-none-{i}")
            assert absent.value.code.name == "NOT_FOUND"


async def test_calls_beyond_the_in_flight_bound_are_refused_at_once(
    server_settings: ServerSettings,
    start_server: StartServer,
    permissions: Path,
    cassandra_storage: CassandraEventStorage,
) -> None:
    """EVENTSTORE_MAX_CONCURRENT_RPCS (now 2048 by default) counts open streams too: beyond it
    gRPC answers RESOURCE_EXHAUSTED at once, before reading the request, rather than queueing."""
    running = await start_server(
        server_settings.model_copy(
            # model_copy skips validation, which wants room beside the 512 subscriptions.
            update={
                "auth_disabled": False,
                "permissions_file": permissions,
                "max_concurrent_rpcs": 2,
            }
        )
    )
    address = f"127.0.0.1:{running.port}"
    one_try = RetryPolicy(attempts=1)
    async with (
        EventStoreClient(address, api_key=KEYS["auditor"], retry=one_try) as auditor,
        EventStoreClient(address, api_key=KEYS["orders"], retry=one_try, timeout_s=5) as orders,
    ):
        held = [Collector(auditor.subscribe()) for _ in range(2)]
        try:
            for collector in held:
                await collector.wait_for(lambda c: len(c.caught_up_at) > 0)
            started = time.monotonic()
            over = await refused(orders.append("order-1", "Order", [Event("Placed", {})]))
            assert time.monotonic() - started < 2, "queued, not refused"
            assert isinstance(over, ResourceExhaustedError), over
            assert over.retry_after_s is None  # not a quota: the client does not retry it
            assert await cassandra_storage.describe("order-1") is None
        finally:
            for collector in held:
                await collector.stop()
        deadline = time.monotonic() + 10
        while True:  # the server sees the cancelled streams end shortly after
            try:
                await orders.append("order-1", "Order", [Event("Placed", {})])
                break
            except ResourceExhaustedError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)


def closable(events: AsyncIterator[RecordedEvent]) -> AsyncGenerator[RecordedEvent, None]:
    """The client's `read`, which is a generator: closing it cancels its call."""
    assert isinstance(events, AsyncGenerator)
    return events


async def test_one_principals_slow_calls_are_bounded_and_leave_the_others_served(
    server_settings: ServerSettings, start_server: StartServer, tmp_path: Path
) -> None:
    """Within its rate, one principal could hold any number of slow calls and take the slots
    of EVENTSTORE_MAX_CONCURRENT_RPCS from the others. `max_calls_in_flight` bounds it.

    The slow calls are reads of a 24 MB aggregate that the caller stops reading after the
    first message: the server's generator then waits on HTTP/2 flow control (four such reads
    over one connection fill its window: 4 MB each was all delivered at once, 16 MB each still
    held after 3 s), so each holds its slot server-side for as long as the client keeps it."""
    path = tmp_path / "permissions.yaml"
    # Its own bytes quota, so filling the aggregate is not slowed by the default 8 MB/s.
    path.write_text(
        with_quotas("orders", "{max_calls_in_flight: 4, append_bytes_per_s: 100000000}")
    )
    running = await start_server(
        # Pages of 2 events: each held read keeps about 2 MB in the server, not all 24.
        server_settings.model_copy(
            update={"auth_disabled": False, "permissions_file": path, "read_page_size": 2}
        )
    )
    address = f"127.0.0.1:{running.port}"
    one_try = RetryPolicy(attempts=1)
    async with (
        EventStoreClient(address, api_key=KEYS["orders"], retry=one_try, timeout_s=30) as orders,
        EventStoreClient(address, api_key=KEYS["auditor"], retry=one_try, timeout_s=30) as auditor,
        EventStoreClient(address, api_key=KEYS["orders"], timeout_s=30) as patient,
    ):
        blob = "x" * 1_000_000
        for _ in range(6):
            await orders.append(
                "order-long", "Order", [Event("Placed", {"b": blob}) for _ in range(4)]
            )
        readers = [closable(orders.read("order-long")) for _ in range(4)]
        for reader in readers:
            assert (await anext(reader)).version == 1  # open, then left unread
        try:
            await asyncio.sleep(0.5)  # had they been delivered whole, they would have ended
            over = await refused(orders.get_aggregate("order-long"))
            assert isinstance(over, ResourceExhaustedError), over
            assert quota_of(over) == ("max_calls_in_flight", "max_calls_in_flight is 4")
            assert over.retry_after_s == pytest.approx(0.1)
            with pytest.raises(ResourceExhaustedError):  # a stream is refused just the same
                await orders.read_all("order-long")
            # The client's default policy retries after the advised delay, then gives up.
            started = time.monotonic()
            with pytest.raises(ResourceExhaustedError):
                await patient.get_aggregate("order-long")
            gave_up = time.monotonic() - started
            assert 0.5 < gave_up < 5, gave_up
            # Another principal is served meanwhile, the same slow read included.
            assert (await auditor.get_aggregate("order-long")).version == 24
            assert len(await auditor.read_all("order-long")) == 24
        finally:
            for reader in readers:
                await reader.aclose()  # the client cancels each call
        # The slots came back: at once for the client, shortly after for the server.
        deadline = time.monotonic() + 5
        while True:
            try:
                assert (await orders.get_aggregate("order-long")).version == 24
                break
            except ResourceExhaustedError:
                assert time.monotonic() < deadline, "the abandoned reads kept their slots"
                await asyncio.sleep(0.05)
        settled = time.monotonic() - (deadline - 5)
        print(
            f"4 held reads: the 5th call refused; the default client gave up after "
            f"{gave_up:.2f} s; slots back {settled:.2f} s after the reads were closed"
        )
        held_again = [closable(orders.read("order-long")) for _ in range(4)]
        try:
            for reader in held_again:
                await anext(reader)
        finally:
            for reader in held_again:
                await reader.aclose()


def peak_resident_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def test_requests_without_a_valid_credential_are_refused_before_they_are_read(
    cassandra_settings: CassandraSettings, permissions: Path, tmp_path: Path
) -> None:
    """gRPC reads a unary request whole before the servicer runs: 160 unauthenticated 8 MiB
    appends over 8 connections grew the server's peak memory by 1,336 MiB (all 160 requests,
    read). They are refused from their headers now, and what HTTP/2 flow control lets in
    before the refusal arrives is at most the fixed 1 MiB window per stream: 6-8 MiB in four
    quiet runs (with gRPC's bandwidth probing growing windows: 37-401 MiB quiet, 925 MiB in a
    loaded CI run)."""
    server = ServerProcess(cassandra_settings, free_port(), tmp_path / "server.log")
    server.env.update(
        {"EVENTSTORE_AUTH_DISABLED": "false", "EVENTSTORE_PERMISSIONS_FILE": str(permissions)}
    )
    await server.start()
    assert server.process is not None
    pid = server.process.pid
    big = pb.AppendRequest(
        aggregate_id="order-flood",
        aggregate_type="Order",
        expected_version=pb.ExpectedVersion(exact=0),
        events=[
            pb.EventData(
                event_id=str(uuid.uuid4()), event_type="Placed", data=b"x" * (8 * 1024 * 1024)
            )
        ],
    ).SerializeToString()
    try:
        await asyncio.sleep(1)  # settled after start-up
        before = peak_resident_bytes(pid)
        codes: list[grpc.StatusCode] = []

        async def flood(credentials: list[tuple[str, str]]) -> None:
            async with grpc.aio.insecure_channel(
                server.address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
            ) as channel:
                append = channel.unary_unary(
                    "/eventstore.v1.EventStore/Append",
                    request_serializer=None,
                    response_deserializer=None,
                )
                outcomes = await asyncio.gather(
                    *(append(big, metadata=credentials, timeout=60) for _ in range(20)),
                    return_exceptions=True,
                )
            for outcome in outcomes:
                assert isinstance(outcome, grpc.aio.AioRpcError), outcome
                codes.append(outcome.code())

        # No credential, an unknown key, two authorization headers: 8 connections in all.
        await asyncio.gather(
            *(flood([]) for _ in range(4)),
            *(flood([("authorization", "Bearer not-a-key")]) for _ in range(2)),
            *(
                flood([("authorization", f"Bearer {KEYS['orders']}"), ("authorization", "x")])
                for _ in range(2)
            ),
        )
        grown = peak_resident_bytes(pid) - before
        print(f"160 refused 8 MiB requests: the server's peak memory grew {grown / 2**20:.0f} MiB")
        assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}
        assert len(codes) == 160
        # 160 streams x the 1 MiB window, and some room for the server's own allocations.
        assert grown < 200 * 1024 * 1024, f"grew {grown / 2**20:.0f} MiB: requests were read"
        # And the server still serves a valid caller.
        async with EventStoreClient(server.address, api_key=KEYS["orders"]) as client:
            await client.append(f"order-{uuid.uuid4().hex}", "Order", [Event("Placed", {})])
    finally:
        await server.stop()
