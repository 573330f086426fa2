"""Append and read through the gRPC API against the real Cassandra (invariants 1-4, 6)."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from eventstore.client import (
    AggregateNotFoundError,
    Event,
    EventStoreClient,
    ExpectedVersion,
    InvalidArgumentError,
    WrongExpectedVersionError,
)
from eventstore.server import RunningServer
from tests.support import unique

pytestmark = pytest.mark.integration


async def test_append_read_and_describe(client: EventStoreClient) -> None:
    aggregate = unique("order")
    first = await client.append(
        aggregate,
        "Order",
        [Event("OrderPlaced", {"total": 10}, metadata={"correlation_id": "c1"})],
        expected=ExpectedVersion.no_stream(),
    )
    second = await client.append(
        aggregate,
        "Order",
        [Event("OrderPaid", {"amount": 10}), Event("OrderShipped", {})],
        expected=ExpectedVersion.exact(1),
    )
    assert (first.first_version, first.last_version) == (1, 1)
    assert (second.first_version, second.last_version) == (2, 3)
    events = await client.read_all(aggregate)
    assert [(e.version, e.event_type) for e in events] == [
        (1, "OrderPlaced"),
        (2, "OrderPaid"),
        (3, "OrderShipped"),
    ]
    assert events[0].metadata == {"correlation_id": "c1"}
    assert events[0].recorded_at == first.committed_at
    assert events[0].event_id == first.event_ids[0]
    backwards = await client.read_all(aggregate, backwards=True, max_count=2)
    assert [e.version for e in backwards] == [3, 2]
    from_two = await client.read_all(aggregate, from_version=2)
    assert [e.version for e in from_two] == [2, 3]
    info = await client.get_aggregate(aggregate)
    assert (info.version, info.aggregate_type) == (3, "Order")
    assert info.first_recorded_at == first.committed_at
    assert info.last_recorded_at == second.committed_at


async def test_long_stream_is_read_in_pages(client: EventStoreClient) -> None:
    aggregate = unique("big")
    for _ in range(3):
        await client.append(aggregate, "Big", [Event("Tick", {"i": i}) for i in range(400)])
    versions = [e.version async for e in client.read(aggregate)]
    assert versions == list(range(1, 1201))
    tail = [e.version async for e in client.read(aggregate, backwards=True)]
    assert tail == list(range(1200, 0, -1))


async def test_unknown_aggregate_is_not_found(client: EventStoreClient) -> None:
    with pytest.raises(AggregateNotFoundError):
        await client.get_aggregate(unique("nobody"))
    with pytest.raises(AggregateNotFoundError):
        await client.read_all(unique("nobody"))


async def test_racing_writers_with_exact_versions(client: EventStoreClient) -> None:
    """24 writers race on one aggregate: versions 1..N, no gap, every ack present once, and
    every loser told expected and actual version in structured details."""
    aggregate = unique("race")
    acknowledged: list[uuid.UUID] = []
    conflicts: list[tuple[int, int]] = []
    appends_each = 6

    async def writer(n: int) -> None:
        known = 0
        done = 0
        while done < appends_each:
            event = Event("Raced", {"writer": n, "i": done})
            conflict: WrongExpectedVersionError | None = None
            try:
                result = await client.append(aggregate, "Race", [event], expected=known)
            except WrongExpectedVersionError as exc:
                conflict = exc
            if conflict is not None:
                assert conflict.aggregate_id == aggregate
                assert conflict.expected in (
                    ExpectedVersion.exact(known),
                    ExpectedVersion.no_stream(),
                )
                assert conflict.actual_version > known
                conflicts.append((known, conflict.actual_version))
                known = conflict.actual_version
                continue
            assert result.first_version == known + 1
            acknowledged.append(event.event_id)
            known = result.last_version
            done += 1

    await asyncio.gather(*(writer(n) for n in range(24)))
    events = await client.read_all(aggregate)
    assert [e.version for e in events] == list(range(1, 24 * appends_each + 1))
    assert sorted(e.event_id for e in events) == sorted(acknowledged)
    assert len(set(acknowledged)) == len(acknowledged)
    assert conflicts, "24 racing writers should have collided at least once"


async def test_concurrent_any_appends_lose_nothing(client: EventStoreClient) -> None:
    aggregate = unique("any")
    sent: list[uuid.UUID] = []

    async def writer(n: int) -> None:
        for i in range(8):
            events = [Event("Counted", {"w": n, "i": i}), Event("Counted", {"w": n, "i": -i})]
            sent.extend(e.event_id for e in events)
            result = await client.append(aggregate, "Counter", events)
            assert result.last_version == result.first_version + 1

    await asyncio.gather(*(writer(n) for n in range(20)))
    events = await client.read_all(aggregate)
    assert [e.version for e in events] == list(range(1, len(sent) + 1))
    assert sorted(e.event_id for e in events) == sorted(sent)
    # The two events of each append stay adjacent (one atomic batch).
    by_id = {e.event_id: e.version for e in events}
    for first, second in zip(sent[::2], sent[1::2], strict=True):
        assert by_id[second] == by_id[first] + 1


async def test_conflicting_multi_event_append_writes_none(client: EventStoreClient) -> None:
    aggregate = unique("atomic")
    await client.append(aggregate, "Order", [Event("A", {}) for _ in range(3)], expected=0)
    refused = [Event("B", {}) for _ in range(5)]
    with pytest.raises(WrongExpectedVersionError) as caught:
        await client.append(aggregate, "Order", refused, expected=1)
    assert caught.value.actual_version == 3
    events = await client.read_all(aggregate)
    assert [e.event_type for e in events] == ["A", "A", "A"]
    assert not {e.event_id for e in refused} & {e.event_id for e in events}


@pytest.mark.parametrize(
    "expected",
    [ExpectedVersion.no_stream(), ExpectedVersion.any(), ExpectedVersion.stream_exists(), 0],
    ids=["no_stream", "any", "stream_exists", "exact"],
)
async def test_retry_of_committed_append_returns_original(
    client: EventStoreClient, expected: ExpectedVersion | int
) -> None:
    aggregate = unique("retry")
    if expected == ExpectedVersion.stream_exists():
        await client.append(aggregate, "Order", [Event("Seed", {})], expected=0)
    events = [Event("OrderPlaced", {"n": 1}), Event("OrderPaid", {"n": 2})]
    original = await client.append(aggregate, "Order", events, expected=expected)
    await client.append(aggregate, "Order", [Event("Later", {})])  # the stream moves on
    retried = await client.append(aggregate, "Order", events, expected=expected)
    assert retried.already_committed
    assert (retried.first_version, retried.last_version) == (
        original.first_version,
        original.last_version,
    )
    assert retried.committed_at == original.committed_at
    stored = await client.read_all(aggregate)
    assert [e.event_id for e in stored].count(events[0].event_id) == 1
    assert len(stored) == original.last_version + 1


async def test_partly_committed_retry_is_invalid(client: EventStoreClient) -> None:
    aggregate = unique("partial")
    events = [Event("A", {}), Event("B", {})]
    await client.append(aggregate, "Order", events, expected=0)
    with pytest.raises(InvalidArgumentError) as caught:
        await client.append(aggregate, "Order", [*events, Event("C", {})], expected=0)
    assert caught.value.fields == ["events[0].event_id"]
    with pytest.raises(InvalidArgumentError) as caught:
        await client.append(aggregate, "Order", [Event("D", {}), events[1]])
    assert caught.value.fields == ["events[1].event_id"]
    assert len(await client.read_all(aggregate)) == 2


async def test_aggregate_type_is_fixed_by_the_first_append(client: EventStoreClient) -> None:
    aggregate = unique("typed")
    await client.append(aggregate, "Order", [Event("A", {})], expected=0)
    with pytest.raises(InvalidArgumentError) as caught:
        await client.append(aggregate, "Payment", [Event("B", {})])
    assert caught.value.fields == ["aggregate_type"]


async def test_stream_expectations(client: EventStoreClient) -> None:
    aggregate = unique("expect")
    with pytest.raises(WrongExpectedVersionError) as caught:
        await client.append(aggregate, "T", [Event("A", {})], ExpectedVersion.stream_exists())
    assert caught.value.actual_version == 0
    await client.append(aggregate, "T", [Event("A", {})], ExpectedVersion.no_stream())
    with pytest.raises(WrongExpectedVersionError) as caught:
        await client.append(aggregate, "T", [Event("B", {})], ExpectedVersion.no_stream())
    assert caught.value.expected == ExpectedVersion.no_stream()
    assert caught.value.actual_version == 1
    result = await client.append(aggregate, "T", [Event("B", {})], ExpectedVersion.stream_exists())
    assert result.first_version == 2


async def test_health_and_reflection(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "eventstore.v1.EventStore"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        names: list[str] = []
        async for reply in reflection.ServerReflectionInfo(iter([request])):
            names += [s.name for s in reply.list_services_response.service]
        assert "eventstore.v1.EventStore" in names
