"""Every use case takes the caller's principal as a required argument (no default that grants
everything) and refuses a principal without the grant before touching anything."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from eventstore.domain.access import (
    PRINCIPAL_KEY,
    UNRESTRICTED,
    Operation,
    PermissionDenied,
    Principal,
)
from eventstore.domain.errors import AggregateNotFound, InvalidArgument, SnapshotNotFound
from eventstore.domain.events import AppendRequest, Direction, ExpectedVersion
from eventstore.domain.queries import EventQuery
from eventstore.domain.subscriptions import Start, StartAt, SubscriptionFilter
from eventstore.domain.validation import ReadRequest
from eventstore.storage.memory import (
    InMemoryAggregateCatalog,
    InMemoryEventStorage,
    InMemorySnapshotStore,
)
from eventstore.usecases.append import AppendEvents
from eventstore.usecases.query import QueryEvents
from eventstore.usecases.read import DescribeAggregate, ReadAggregate
from eventstore.usecases.snapshots import GetSnapshot, SaveSnapshot
from eventstore.usecases.subscribe import Subscribe
from tests.contract.storage import new_events
from tests.fakes import InMemoryEventIndex, InMemoryEventLog

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def only(aggregate_type: str) -> Principal:
    """May do everything, but only to `aggregate_type`."""
    return Principal("limited", {op: frozenset({aggregate_type}) for op in Operation})


#: May query every type (so it can learn which aggregates exist), and read none.
QUERIER = Principal("querier", {Operation.QUERY: frozenset({"*"})})


@pytest.mark.parametrize(
    "call",
    [
        AppendEvents.__call__,
        ReadAggregate.pages,
        DescribeAggregate.__call__,
        Subscribe.__call__,
        QueryEvents.__call__,
        SaveSnapshot.__call__,
        GetSnapshot.__call__,
    ],
    ids=lambda call: call.__qualname__,
)
def test_the_principal_has_no_default(call: Callable[..., object]) -> None:
    principal = inspect.signature(call).parameters["principal"]
    assert principal.default is inspect.Parameter.empty


@pytest.fixture
async def storage() -> InMemoryEventStorage:
    """One aggregate "order-1" of type Order at version 2."""
    storage = InMemoryEventStorage()
    await storage.append("order-1", "Order", 0, new_events(2), NOW)
    return storage


async def test_append_refuses_before_anything_is_written_or_registered() -> None:
    storage, catalog = InMemoryEventStorage(), InMemoryAggregateCatalog()
    append = AppendEvents(storage, catalog=catalog)
    request = AppendRequest("order-1", "Order", ExpectedVersion.any(), tuple(new_events(1)))
    with pytest.raises(PermissionDenied) as refused:
        await append(request, only("Payment"))
    assert (refused.value.operation, refused.value.aggregate_type) == (Operation.APPEND, "Order")
    assert await storage.describe("order-1") is None
    assert await catalog.types() == {}


async def test_append_records_who_appended() -> None:
    storage = InMemoryEventStorage()
    append = AppendEvents(storage)
    await append(
        AppendRequest("order-1", "Order", ExpectedVersion.any(), tuple(new_events(2))),
        only("Order"),
    )
    await append(
        AppendRequest("order-1", "Order", ExpectedVersion.any(), tuple(new_events(1))),
        UNRESTRICTED,
    )
    events = await storage.read("order-1", 1, Direction.FORWARDS, 10)
    assert [e.metadata.get(PRINCIPAL_KEY) for e in events] == ["limited", "limited", None]


@pytest.mark.parametrize("from_version", [1, 100])  # a page of events, and past the end
async def test_read_refuses(storage: InMemoryEventStorage, from_version: int) -> None:
    read = ReadAggregate(storage, page_size=10)

    async def error(aggregate_id: str, principal: Principal) -> str:
        request = ReadRequest(aggregate_id, from_version, Direction.FORWARDS, None)
        with pytest.raises((AggregateNotFound, PermissionDenied)) as refused:
            async for _ in read.pages(request, principal):
                pass
        return f"{type(refused.value).__name__}: {refused.value}"

    # Not allowed to see Orders at all: told exactly what an unknown id is told.
    absent = await error("order-404", only("Payment"))
    assert await error("order-1", only("Payment")) == absent.replace("order-404", "order-1")
    # Allowed to see that Orders exist (by queries), not to read them: told why.
    assert (await error("order-1", QUERIER)).startswith("PermissionDenied:")
    request = ReadRequest("order-1", from_version, Direction.FORWARDS, None)
    pages = [p async for p in read.pages(request, only("Order"))]
    assert [len(p) for p in pages] == ([2] if from_version == 1 else [])


async def test_describe_refuses(storage: InMemoryEventStorage) -> None:
    describe = DescribeAggregate(storage)
    with pytest.raises(AggregateNotFound) as hidden:
        await describe("order-1", only("Payment"))
    with pytest.raises(AggregateNotFound) as absent:
        await describe("order-404", only("Payment"))
    assert str(hidden.value) == str(absent.value).replace("order-404", "order-1")
    with pytest.raises(PermissionDenied):
        await describe("order-1", QUERIER)
    assert (await describe("order-1", only("Order"))).version == 2


async def test_subscribe_to_an_aggregate_refuses_before_opening_the_log(
    storage: InMemoryEventStorage,
) -> None:
    log = InMemoryEventLog()
    subscribe = Subscribe(storage, log)

    async def error(aggregate_id: str, principal: Principal, *types: str) -> str:
        items = subscribe(
            SubscriptionFilter(aggregate_id=aggregate_id, aggregate_types=frozenset(types)),
            Start(StartAt.BEGINNING),
            principal,
        )
        with pytest.raises((InvalidArgument, PermissionDenied)) as refused:
            await anext(items)
        return f"{type(refused.value).__name__}: {refused.value}".replace(aggregate_id, "<id>")

    payments = only("Payment")
    assert await error("order-1", payments) == await error("order-404", payments)
    assert await error("order-1", payments, "Order") == await error("order-404", payments, "Order")
    assert "Order" not in await error("order-1", payments, "Payment")
    assert (await error("order-1", QUERIER)).startswith("PermissionDenied:")
    assert log.readers == []


async def test_a_wide_subscription_naming_a_forbidden_type_is_refused_at_the_call(
    storage: InMemoryEventStorage,
) -> None:
    log = InMemoryEventLog()
    subscribe = Subscribe(storage, log)
    with pytest.raises(PermissionDenied):
        subscribe(
            SubscriptionFilter(aggregate_types=frozenset({"Order"})),
            Start(StartAt.BEGINNING),
            only("Payment"),
        )
    with pytest.raises(PermissionDenied):  # no subscribe grant at all
        subscribe(SubscriptionFilter(), Start(StartAt.BEGINNING), Principal("nobody"))
    assert log.readers == []


async def test_a_wide_subscription_sees_only_permitted_types(
    storage: InMemoryEventStorage,
) -> None:
    log = InMemoryEventLog()
    await storage.append("pay-1", "Payment", 0, new_events(1), NOW)
    for aggregate in ("order-1", "pay-1"):
        await log.send(await storage.read(aggregate, 1, Direction.FORWARDS, 10))
    items = Subscribe(storage, log)(SubscriptionFilter(), Start(StartAt.BEGINNING), only("Payment"))
    seen = []
    async for item in items:
        if item.caught_up:
            break
        if item.event is not None:
            seen.append(item.event.aggregate_id)
    await items.aclose()
    assert seen == ["pay-1"]


async def test_query_refuses_a_forbidden_type_and_narrows_to_the_permitted_ones(
    storage: InMemoryEventStorage,
) -> None:
    index = InMemoryEventIndex()
    await storage.append("pay-1", "Payment", 0, new_events(1), NOW)
    order = await storage.read("order-1", 1, Direction.FORWARDS, 10)
    index.add([*order, *await storage.read("pay-1", 1, Direction.FORWARDS, 10)])
    query = QueryEvents(index)
    with pytest.raises(PermissionDenied):
        await query(EventQuery(aggregate_types=("Order",)), only("Payment"))
    page = await query(EventQuery(visible_event_id=order[0].event_id), only("Payment"))
    assert [e.aggregate_id for e in page.events] == ["pay-1"]
    assert not page.freshness.event_visible, "an event the caller may not query is not visible"
    everyone = await query(EventQuery(visible_event_id=order[0].event_id), UNRESTRICTED)
    assert everyone.freshness.event_visible


async def test_save_snapshot_needs_the_append_grant(storage: InMemoryEventStorage) -> None:
    snapshots = InMemorySnapshotStore()
    save = SaveSnapshot(storage, snapshots)
    reader = Principal("reader", {Operation.READ: frozenset({"Order"})})
    with pytest.raises(PermissionDenied):
        await save("order-1", 2, b"{}", "S", 1, reader)
    with pytest.raises(InvalidArgument) as hidden:  # may not even see Orders: as if absent
        await save("order-1", 2, b"{}", "S", 1, only("Payment"))
    with pytest.raises(InvalidArgument) as absent:
        await save("order-404", 2, b"{}", "S", 1, only("Payment"))
    assert str(hidden.value) == str(absent.value).replace("order-404", "order-1")
    assert await snapshots.latest("order-1", None) is None
    await save("order-1", 2, b"{}", "S", 1, only("Order"))
    assert await snapshots.latest("order-1", None) is not None


async def test_no_snapshot_of_an_aggregate_without_events_whoever_asks() -> None:
    """Its type is unknown, so no grant could be checked: refused for everyone."""
    storage, snapshots = InMemoryEventStorage(), InMemorySnapshotStore()
    save = SaveSnapshot(storage, snapshots)
    with pytest.raises(InvalidArgument) as refused:
        await save("ghost", 0, b"{}", "S", 1, only("Payment"))
    assert [v.field for v in refused.value.violations] == ["version"]
    assert await snapshots.latest("ghost", None) is None


async def test_get_snapshot_refuses(storage: InMemoryEventStorage) -> None:
    snapshots = InMemorySnapshotStore()
    await SaveSnapshot(storage, snapshots)("order-1", 1, b"{}", "S", 1, UNRESTRICTED)
    get = GetSnapshot(storage, snapshots)
    with pytest.raises(SnapshotNotFound) as hidden:
        await get("order-1", None, only("Payment"))
    with pytest.raises(SnapshotNotFound) as absent:
        await get("order-404", None, only("Payment"))
    assert str(hidden.value) == str(absent.value).replace("order-404", "order-1")
    with pytest.raises(PermissionDenied):
        await get("order-1", None, QUERIER)
    assert (await get("order-1", None, only("Order"))).version == 1
