"""Authentication, authorization per aggregate type, the recorded principal, quotas and key
rotation, against the real stack (Cassandra, Kafka, OpenSearch).

Principals of these tests:
  orders    appends Order; reads, queries and subscribes to Order and Payment
  payments  appends Payment; reads, queries and subscribes to Payment; 20 events/s; 1 subscription
  billing   appends Invoice only
  auditor   reads, queries and subscribes to everything; appends nothing
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.certificates import make_ca, make_cert
from eventstore.access_cli import new_key
from eventstore.client import (
    ClientError,
    Event,
    EventIdReusedError,
    EventStoreClient,
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceExhaustedError,
    RetryPolicy,
    TlsOptions,
    UnauthenticatedError,
)
from eventstore.config import CassandraSettings, LimitSettings, ServerSettings
from eventstore.domain.access import PRINCIPAL_KEY, hash_key
from eventstore.domain.events import Direction
from eventstore.server import RunningServer
from eventstore.storage.cassandra import CassandraEventStorage
from eventstore.v1 import eventstore_pb2, eventstore_pb2_grpc
from tests.integration.conftest import StartServer
from tests.integration.test_indexer import IndexerProcess
from tests.integration.test_restart import ServerProcess, free_port
from tests.integration.test_subscribe import Collector, events_at_least

pytestmark = pytest.mark.integration

KEYS = {name: new_key() for name in ("orders", "payments", "billing", "auditor", "spare")}


def permissions_yaml(keys: dict[str, list[str]], certificates: dict[str, list[str]]) -> str:
    def listed(values: list[str]) -> str:
        return "[" + ", ".join(f"'{v}'" for v in values) + "]"

    def entry(name: str, grants: str) -> str:
        hashed = [hash_key(k) for k in keys.get(name, [])]
        return (
            f"  {name}:\n    keys: {listed(hashed)}\n"
            f"    certificates: {listed(certificates.get(name, []))}\n{grants}"
        )

    return "principals:\n" + "".join(
        [
            entry(
                "orders",
                "    append: [Order]\n    read: [Order, Payment]\n"
                "    query: [Order, Payment]\n    subscribe: [Order, Payment]\n",
            ),
            entry(
                "payments",
                "    append: [Payment]\n    read: [Payment]\n    query: [Payment]\n"
                "    subscribe: [Payment]\n"
                "    quotas: {append_events_per_s: 20, max_subscriptions: 1}\n",
            ),
            entry("billing", "    append: [Invoice]\n"),
            entry("auditor", "    read: ['*']\n    query: ['*']\n    subscribe: ['*']\n"),
        ]
    )


def default_keys() -> dict[str, list[str]]:
    return {name: [KEYS[name]] for name in ("orders", "payments", "billing", "auditor")}


@pytest.fixture
def permissions(tmp_path: Path) -> Path:
    path = tmp_path / "permissions.yaml"
    path.write_text(permissions_yaml(default_keys(), {}))
    return path


@pytest.fixture
async def secure_server(
    server_settings: ServerSettings, start_server: StartServer, permissions: Path
) -> RunningServer:
    return await start_server(
        server_settings.model_copy(
            update={
                "auth_disabled": False,
                "permissions_file": permissions,
                "permissions_reload_s": 0.2,
                "subscription_heartbeat_s": 0.5,
            }
        )
    )


Connect = Callable[..., EventStoreClient]


@pytest.fixture
async def connect(secure_server: RunningServer) -> AsyncIterator[Connect]:
    clients: list[EventStoreClient] = []

    def make(api_key: str | None = None, **options: object) -> EventStoreClient:
        options.setdefault("retry", RetryPolicy(attempts=1))  # see every refusal
        client = EventStoreClient(
            f"127.0.0.1:{secure_server.port}",
            api_key=api_key,
            timeout_s=10,
            **options,  # type: ignore[arg-type]
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def refused(call: Awaitable[object]) -> ClientError:
    with pytest.raises(ClientError) as caught:
        await call
    return caught.value


async def first_message(client: EventStoreClient, **filters: object) -> object:
    async for message in client.subscribe(**filters):  # type: ignore[arg-type]
        return message
    return None


async def test_every_rpc_needs_a_valid_credential(
    connect: Connect, secure_server: RunningServer
) -> None:
    for key in (None, "esk_not-a-key-we-issued"):
        client = connect(key)
        calls: list[Awaitable[object]] = [
            client.append("order-1", "Order", [Event("Placed", {})]),
            client.read_all("order-1"),
            client.get_aggregate("order-1"),
            client.query_events(),
            client.get_snapshot("order-1"),
            first_message(client),
        ]
        for call in calls:
            error = await refused(call)
            assert isinstance(error, UnauthenticatedError), error
    # Two authorization headers: refused, not the first (or last) one taken.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{secure_server.port}") as channel:
        stub = eventstore_pb2_grpc.EventStoreStub(channel)
        for second in (KEYS["auditor"], "esk_not-a-key-we-issued", KEYS["orders"]):
            headers = (
                ("authorization", f"Bearer {KEYS['orders']}"),
                ("authorization", f"Bearer {second}"),
            )
            with pytest.raises(grpc.aio.AioRpcError) as twice:
                await stub.GetAggregate(
                    eventstore_pb2.GetAggregateRequest(aggregate_id="order-1"), metadata=headers
                )
            assert twice.value.code() == grpc.StatusCode.UNAUTHENTICATED, second
    # Health stays open to probes, without credentials.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{secure_server.port}") as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    # …and nothing was written by any of it.
    auditor = connect(KEYS["auditor"])
    assert await auditor.query_all() == []
    error = await refused(auditor.get_aggregate("order-1"))
    assert error.code.name == "NOT_FOUND"


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


async def test_the_recorded_principal_cannot_be_forged(
    connect: Connect, cassandra_storage: CassandraEventStorage
) -> None:
    orders = connect(KEYS["orders"])
    forged = await refused(
        orders.append(
            "order-1", "Order", [Event("Placed", {}, metadata={PRINCIPAL_KEY: "auditor"})]
        )
    )
    assert isinstance(forged, InvalidArgumentError)
    assert forged.fields == ["events[0].metadata[$principal]"]
    for look_alike in ("\uff04principal", "\u200b$principal"):  # fullwidth $, zero-width space
        forged = await refused(
            orders.append("order-1", "Order", [Event("Placed", {}, metadata={look_alike: "x"})])
        )
        assert isinstance(forged, InvalidArgumentError)
        assert forged.fields == [f"events[0].metadata[{look_alike}]"]
    assert await cassandra_storage.describe("order-1") is None
    await orders.append(
        "order-1", "Order", [Event("Placed", {}, metadata={"trace": "t-1"}), Event("Paid", {})]
    )
    stored = await cassandra_storage.read("order-1", 1, Direction.FORWARDS, 10)
    assert [dict(e.metadata) for e in stored] == [
        {"trace": "t-1", PRINCIPAL_KEY: "orders"},
        {PRINCIPAL_KEY: "orders"},
    ]
    # What subscribers get is what was stored.
    async for message in connect(KEYS["auditor"]).subscribe(aggregate_id="order-1"):
        assert message.event is not None
        assert message.event.metadata[PRINCIPAL_KEY] == "orders"
        break


async def append_mixed(connect: Connect) -> dict[str, set[tuple[str, int]]]:
    """Events of three types by their three writers; what was written, by type."""
    writers = {"Order": "orders", "Payment": "payments", "Invoice": "billing"}
    written: dict[str, set[tuple[str, int]]] = {t: set() for t in writers}
    for aggregate_type, writer in writers.items():
        client = connect(KEYS[writer])
        for i in range(3):
            aggregate_id = f"{aggregate_type.lower()}-{i}"
            result = await client.append(
                aggregate_id, aggregate_type, [Event("A", {}), Event("B", {})]
            )
            written[aggregate_type] |= {
                (aggregate_id, v) for v in range(result.first_version, result.last_version + 1)
            }
    return written


async def test_wildcard_subscriptions_see_only_readable_types(
    connect: Connect, cassandra_storage: CassandraEventStorage
) -> None:
    written = await append_mixed(connect)
    # What Cassandra holds, by type, is what was acknowledged.
    for aggregate_type, events in written.items():
        for aggregate_id in {a for a, _ in events}:
            info = await cassandra_storage.describe(aggregate_id)
            assert info is not None
            assert info.aggregate_type == aggregate_type
    expected = {
        "payments": written["Payment"],
        "orders": written["Order"] | written["Payment"],
        "auditor": written["Order"] | written["Payment"] | written["Invoice"],
    }
    collectors = {name: Collector(connect(KEYS[name]).subscribe()) for name in expected}
    try:
        # Topics of new types are found within seconds, so wait for the events, not caught-up.
        for name, collector in collectors.items():
            await collector.wait_for(events_at_least(len(expected[name])), within=60)
        await collectors["auditor"].settle()
        for name, collector in collectors.items():
            seen = {(e.aggregate_id, e.version) for e in collector.events}
            assert seen == expected[name], name
        # Live events too: an Invoice appended now reaches the auditor only.
        await connect(KEYS["billing"]).append("invoice-9", "Invoice", [Event("Issued", {})])
        await collectors["auditor"].wait_for(
            lambda c: any(e.aggregate_id == "invoice-9" for e in c.events)
        )
        await collectors["orders"].settle()
        for name in ("orders", "payments"):
            assert all(e.aggregate_type != "Invoice" for e in collectors[name].events), name
    finally:
        for collector in collectors.values():
            await collector.stop()
    # Naming a type one may not subscribe to is refused, not silently empty.
    denied = await refused(first_message(connect(KEYS["payments"]), aggregate_types=["Order"]))
    assert isinstance(denied, PermissionDeniedError)
    assert denied.reason["operation"] == "subscribe"
    assert isinstance(await refused(first_message(connect(KEYS["billing"]))), PermissionDeniedError)


async def test_unfiltered_queries_see_only_readable_types(
    connect: Connect, secure_server: RunningServer, tmp_path: Path
) -> None:
    settings = secure_server.settings
    indexer = IndexerProcess(settings.kafka, settings.opensearch, tmp_path / "indexer.log")
    await indexer.start()
    try:
        written = await append_mixed(connect)
        # Retries as clients do by default: while the indexer creates the first index, a search
        # may briefly get UNAVAILABLE.
        auditor = connect(KEYS["auditor"], retry=RetryPolicy())
        everything = written["Order"] | written["Payment"] | written["Invoice"]
        deadline = time.monotonic() + 90
        while len(await auditor.query_all()) < len(everything):
            assert time.monotonic() < deadline, "the indexer did not index every event"
            await asyncio.sleep(0.5)

        async def seen(name: str, **filters: object) -> set[tuple[str, int]]:
            found = await connect(KEYS[name]).query_all(**filters)
            return {(e.aggregate_id, e.version) for e in found}

        assert await seen("auditor") == everything
        assert await seen("payments") == written["Payment"]
        assert await seen("orders") == written["Order"] | written["Payment"]
        # By event type or by aggregate id, still only the readable types.
        assert await seen("payments", event_types=["A"]) == {
            (a, v) for a, v in written["Payment"] if v == 1
        }
        assert await seen("payments", aggregate_id="order-0") == set()
        # Whether an event of a type one may not query is indexed is not told either.
        (order_event,) = await auditor.query_all(aggregate_id="order-0", event_types=["A"])
        for name, visible in (("payments", False), ("orders", True)):
            page = await connect(KEYS[name]).query_events(
                visible_event_id=order_event.event_id, page_size=1
            )
            assert page.freshness.event_visible is visible, name
        # Paging through a narrowed query works (the token is bound to the client's filters).
        assert await seen("orders", page_size=4) == written["Order"] | written["Payment"]
        denied = await refused(connect(KEYS["payments"]).query_events(aggregate_types=["Order"]))
        assert isinstance(denied, PermissionDeniedError)
        assert denied.reason == {
            "principal": "payments",
            "operation": "query",
            "aggregate_type": "Order",
        }
    finally:
        await indexer.kill()


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


async def test_keys_rotate_without_a_restart(connect: Connect, permissions: Path) -> None:
    old, new = KEYS["orders"], KEYS["spare"]
    keys = default_keys()
    keys["orders"] = [old, new]
    await asyncio.to_thread(permissions.write_text, permissions_yaml(keys, {}))
    await eventually_accepted(connect(new))
    await connect(old).append("order-1", "Order", [Event("Placed", {})])  # both work
    keys["orders"] = [new]
    await asyncio.to_thread(permissions.write_text, permissions_yaml(keys, {}))
    deadline = time.monotonic() + 10
    while True:
        try:
            await connect(old).append("order-1", "Order", [Event("Placed", {})])
        except UnauthenticatedError:
            break
        assert time.monotonic() < deadline, "the removed key still works"
        await asyncio.sleep(0.1)
    result = await connect(new).append("order-1", "Order", [Event("Placed", {})])
    assert result.last_version >= 3


async def eventually_accepted(client: EventStoreClient) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            await client.append("order-1", "Order", [Event("Placed", {})])
            return
        except UnauthenticatedError:
            assert time.monotonic() < deadline, "the added key was never accepted"
            await asyncio.sleep(0.1)


async def test_sighup_reloads_the_file_at_once(
    cassandra_settings: CassandraSettings, tmp_path: Path
) -> None:
    path = tmp_path / "permissions.yaml"
    keys = default_keys()
    keys["orders"] = [KEYS["orders"], KEYS["spare"]]
    path.write_text(permissions_yaml(keys, {}))
    proc = ServerProcess(cassandra_settings, free_port(), tmp_path / "server.log")
    del proc.env["EVENTSTORE_AUTH_DISABLED"]
    proc.env["EVENTSTORE_PERMISSIONS_FILE"] = str(path)
    proc.env["EVENTSTORE_PERMISSIONS_RELOAD_S"] = "3600"  # only the signal can reload it
    await proc.start()
    try:
        async with EventStoreClient(
            proc.address, api_key=KEYS["spare"], retry=RetryPolicy(attempts=1)
        ) as spare:
            await spare.append("order-1", "Order", [Event("Placed", {})])
            keys["orders"] = [KEYS["orders"]]
            path.write_text(permissions_yaml(keys, {}))
            assert proc.process is not None
            proc.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 5
            while True:
                try:
                    await spare.append("order-1", "Order", [Event("Placed", {})])
                except UnauthenticatedError:
                    break
                assert time.monotonic() < deadline, "SIGHUP did not reload the file"
                await asyncio.sleep(0.1)
        assert "permission file reloaded" in proc.log.read_text()
    finally:
        await proc.stop()


async def test_without_authentication_the_server_warns_and_records_no_principal(
    cassandra_settings: CassandraSettings, tmp_path: Path
) -> None:
    proc = ServerProcess(cassandra_settings, free_port(), tmp_path / "server.log")
    assert proc.env["EVENTSTORE_AUTH_DISABLED"] == "true"
    await proc.start()
    try:
        async with EventStoreClient(proc.address) as client:
            await client.append("order-1", "Order", [Event("Placed", {})])
            (event,) = await client.read_all("order-1")
            assert PRINCIPAL_KEY not in event.metadata
    finally:
        await proc.stop()
    assert "AUTHENTICATION IS OFF" in proc.log.read_text()


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("identities")
    make_ca("ca", path)
    make_cert("server", "ca", path, san="IP:127.0.0.1,DNS:localhost")
    make_cert("orders-client", "ca", path)
    make_cert("unknown-client", "ca", path)
    # A certificate whose email and URI names equal the "orders-client" name, its CN not.
    make_cert("lookalike", "ca", path, san="email:orders-client,URI:orders-client")
    make_cert("dns-named", "ca", path, san="DNS:orders-client")
    return path


async def test_the_client_certificate_identifies_the_principal(
    server_settings: ServerSettings,
    start_server: StartServer,
    identities: Path,
    tmp_path: Path,
    cassandra_storage: CassandraEventStorage,
) -> None:
    path = tmp_path / "permissions.yaml"
    path.write_text(permissions_yaml(default_keys(), {"orders": ["orders-client"]}))
    running = await start_server(
        server_settings.model_copy(
            update={
                "auth_disabled": False,
                "permissions_file": path,
                "tls_cert_file": identities / "server.crt",
                "tls_key_file": identities / "server.key",
                "tls_client_ca_file": identities / "ca.crt",
            }
        )
    )

    def tls(name: str) -> TlsOptions:
        return TlsOptions(
            str(identities / "ca.crt"),
            str(identities / f"{name}.crt"),
            str(identities / f"{name}.key"),
        )

    address = f"127.0.0.1:{running.port}"
    one_try = RetryPolicy(attempts=1)
    async with EventStoreClient(address, tls=tls("orders-client"), retry=one_try) as orders:
        await orders.append("order-1", "Order", [Event("Placed", {})])  # no key needed
        denied = await refused(orders.append("payment-1", "Payment", [Event("Captured", {})]))
        assert isinstance(denied, PermissionDeniedError)
    stored = await cassandra_storage.read("order-1", 1, Direction.FORWARDS, 10)
    assert [e.metadata[PRINCIPAL_KEY] for e in stored] == ["orders"]
    # A valid certificate of no known principal, and a certificate and key that disagree.
    async with EventStoreClient(address, tls=tls("unknown-client"), retry=one_try) as unknown:
        error = await refused(unknown.append("order-1", "Order", [Event("Placed", {})]))
        assert isinstance(error, UnauthenticatedError)
    async with EventStoreClient(
        address, tls=tls("orders-client"), api_key=KEYS["payments"], retry=one_try
    ) as mixed:
        error = await refused(mixed.append("order-1", "Order", [Event("Placed", {})]))
        assert isinstance(error, UnauthenticatedError)
    # With a known certificate, a key of the same principal is fine too.
    async with EventStoreClient(
        address, tls=tls("unknown-client"), api_key=KEYS["orders"], retry=one_try
    ) as keyed:
        await keyed.append("order-1", "Order", [Event("Placed", {})])
    # Only common names and DNS names identify (EVENTSTORE_TLS_CLIENT_IDENTITIES=cn,dns): an
    # email or URI name equal to a principal's certificate name once logged in as it.
    async with EventStoreClient(address, tls=tls("lookalike"), retry=one_try) as lookalike:
        error = await refused(lookalike.append("order-1", "Order", [Event("Placed", {})]))
        assert isinstance(error, UnauthenticatedError)
    async with EventStoreClient(address, tls=tls("dns-named"), retry=one_try) as dns_named:
        await dns_named.append("order-1", "Order", [Event("Placed", {})])


def test_the_server_will_not_start_without_a_permissions_file_or_with_a_wrong_one(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    env["EVENTSTORE_LISTEN"] = "127.0.0.1:0"

    def server_exit() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "eventstore.server"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    missing = server_exit()
    assert missing.returncode == 2
    assert "EVENTSTORE_PERMISSIONS_FILE is required" in missing.stderr
    assert "EVENTSTORE_AUTH_DISABLED=true" in missing.stderr
    wrong = tmp_path / "permissions.yaml"
    wrong.write_text("principals:\n  orders:\n    keys: ['not-a-hash']\n")
    env["EVENTSTORE_PERMISSIONS_FILE"] = str(wrong)
    bad = server_exit()
    assert bad.returncode == 2
    assert "principals.orders.keys" in bad.stderr


async def replay_cli(address: str, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "replayer.main",
        "--server",
        address,
        *args,
        env={k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")} | env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_replay_cli_authenticates_with_a_key_from_the_environment_or_a_file(
    connect: Connect, secure_server: RunningServer, tmp_path: Path
) -> None:
    await connect(KEYS["orders"]).append("order-1", "Order", [Event("Placed", {"n": 5})])
    address = f"127.0.0.1:{secure_server.port}"
    state = ("state", "order-1", "--reducer", "replayer.examples.counter:reduce")
    code, out, _ = await replay_cli(address, {"EVENTSTORE_API_KEY": KEYS["orders"]}, *state)
    assert code == 0
    assert json.loads(out)["total"] == 5
    key_file = tmp_path / "key"
    key_file.write_text(KEYS["auditor"] + "\n")
    code, out, _ = await replay_cli(address, {}, "--api-key-file", str(key_file), *state)
    assert code == 0
    code, _, err = await replay_cli(address, {}, *state)  # no key
    assert code == 3
    assert "no credential" in err
    # payments may not see Orders: told what an unknown aggregate is told (not "denied").
    code, _, err = await replay_cli(address, {"EVENTSTORE_API_KEY": KEYS["payments"]}, *state)
    unknown = await replay_cli(
        address, {"EVENTSTORE_API_KEY": KEYS["payments"]}, "state", "order-404", *state[2:]
    )
    assert (code, err.replace("order-1", "<id>")) == (
        unknown[0],
        unknown[2].replace("order-404", "<id>"),
    )
    assert code != 0
    assert "Order'" not in err


async def test_open_subscriptions_end_when_their_key_is_removed_or_their_grants_change(
    connect: Connect, permissions: Path
) -> None:
    async def follow(client: EventStoreClient, started: asyncio.Event) -> ClientError:
        try:
            async for _ in client.subscribe():
                started.set()
        except ClientError as ended:
            return ended
        raise AssertionError("the stream ended without a status")

    keys = default_keys()
    keys["orders"] = [KEYS["orders"], KEYS["spare"]]
    await asyncio.to_thread(permissions.write_text, permissions_yaml(keys, {}))
    await eventually_accepted(connect(KEYS["spare"]))
    streams = {}
    for name, key in (("orders", KEYS["orders"]), ("spare", KEYS["spare"])):
        started = asyncio.Event()
        streams[name] = asyncio.create_task(follow(connect(key), started))
        await asyncio.wait_for(started.wait(), 30)  # open: heartbeats are flowing
    # Remove one key: only the stream that authenticated with it ends, as UNAUTHENTICATED.
    keys["orders"] = [KEYS["orders"]]
    await asyncio.to_thread(permissions.write_text, permissions_yaml(keys, {}))
    removed = await asyncio.wait_for(streams["spare"], 10)
    assert isinstance(removed, UnauthenticatedError)
    assert not streams["orders"].done()
    # Narrow the principal's grants: its stream ends (ABORTED), to be resumed under the new ones.
    narrowed = permissions_yaml(keys, {}).replace(
        "    subscribe: [Order, Payment]\n", "    subscribe: [Order]\n"
    )
    await asyncio.to_thread(permissions.write_text, narrowed)
    changed = await asyncio.wait_for(streams["orders"], 10)
    assert changed.code.name == "ABORTED"
    assert "resume from the last checkpoint" in changed.message


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
    read). They are refused from their headers now: 48-392 MiB in ten runs, what HTTP/2 flow
    control (windows grown by gRPC's bandwidth probing) lets in before the refusal arrives."""
    server = ServerProcess(cassandra_settings, free_port(), tmp_path / "server.log")
    server.env.update(
        {"EVENTSTORE_AUTH_DISABLED": "false", "EVENTSTORE_PERMISSIONS_FILE": str(permissions)}
    )
    await server.start()
    assert server.process is not None
    pid = server.process.pid
    big = eventstore_pb2.AppendRequest(
        aggregate_id="order-flood",
        aggregate_type="Order",
        expected_version=eventstore_pb2.ExpectedVersion(exact=0),
        events=[
            eventstore_pb2.EventData(
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
        assert grown < 700 * 1024 * 1024, f"grew {grown / 2**20:.0f} MiB: requests were read"
        # And the server still serves a valid caller.
        async with EventStoreClient(server.address, api_key=KEYS["orders"]) as client:
            await client.append(f"order-{uuid.uuid4().hex}", "Order", [Event("Placed", {})])
    finally:
        await server.stop()
