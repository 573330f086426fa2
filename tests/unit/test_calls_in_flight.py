"""Calls in flight per principal, through gRPC over the in-memory fake: a call holds its slot
from admission to its answer or its stream's end, and gives it back on every path (answer,
error, the client cancelling, a deadline, a stream abandoned half-way, a closed channel)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from eventstore.access_cli import new_key
from eventstore.api.quotas import QuotaLimiter
from eventstore.config import ServerSettings
from eventstore.domain.access import Principal, hash_key
from eventstore.domain.events import AggregateInfo, Direction, RecordedEvent
from eventstore.server import Components, RunningServer, start
from eventstore.storage.memory import InMemoryEventStorage
from eventstore.v1 import eventstore_pb2 as pb
from eventstore.v1 import eventstore_pb2_grpc as pb_grpc

HOLDER, OTHER = new_key(), new_key()
LIMIT = 2
#: Aggregates whose backend calls wait for the gate (a read: from its second page on).
HELD = "held"


class GatedStorage(InMemoryEventStorage):
    """A backend as slow as the test likes: calls on `held…` aggregates wait for `gate`."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0
        self.calls = 0

    async def _held(self, aggregate_id: str) -> None:
        self.calls += 1
        if aggregate_id.startswith(HELD):
            self.waiting += 1
            try:
                await self.gate.wait()
            finally:
                self.waiting -= 1

    async def describe(self, aggregate_id: str) -> AggregateInfo | None:
        await self._held(aggregate_id)
        return await super().describe(aggregate_id)

    async def read(
        self, aggregate_id: str, start: int | None, direction: Direction, limit: int
    ) -> list[RecordedEvent]:
        if (start or 1) > 1:
            await self._held(aggregate_id)
        return await super().read(aggregate_id, start, direction, limit)


@pytest.fixture
def storage() -> GatedStorage:
    return GatedStorage()


@pytest.fixture
async def running(storage: GatedStorage, tmp_path: Path) -> AsyncIterator[RunningServer]:
    permissions = tmp_path / "permissions.yaml"
    permissions.write_text(
        "principals:\n"
        f"  holder:\n    keys: ['{hash_key(HOLDER)}']\n    append: [T]\n    read: [T]\n"
        f"    quotas: {{max_calls_in_flight: {LIMIT}}}\n"
        f"  other:\n    keys: ['{hash_key(OTHER)}']\n    append: [T]\n    read: [T]\n"
    )
    settings = ServerSettings(
        listen="127.0.0.1:0",
        auth_disabled=False,
        permissions_file=permissions,
        read_page_size=1,
    )
    server = await start(settings, Components(storage))
    yield server
    await server.stop(grace=0)


@pytest.fixture
async def stub(running: RunningServer) -> AsyncIterator[pb_grpc.EventStoreAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield pb_grpc.EventStoreStub(channel)


def as_(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def in_flight(running: RunningServer) -> int:
    assert running.deferred.target is not None
    limiter: QuotaLimiter = running.deferred.target._quotas
    return limiter.calls_in_flight(Principal("holder"))


async def settles(check: Callable[[], bool]) -> None:
    """The server sees a cancelled call end shortly after the client does."""
    deadline = time.monotonic() + 5
    while not check():
        assert time.monotonic() < deadline, "never settled"
        await asyncio.sleep(0.01)


Describe = grpc.aio.UnaryUnaryCall[pb.GetAggregateRequest, pb.GetAggregateResponse]


def describe(stub: pb_grpc.EventStoreAsyncStub, aggregate_id: str, timeout: float = 10) -> Describe:
    call: Describe = stub.GetAggregate(
        pb.GetAggregateRequest(aggregate_id=aggregate_id), metadata=as_(HOLDER), timeout=timeout
    )
    return call


async def append(
    stub: pb_grpc.EventStoreAsyncStub, aggregate_id: str, key: str, count: int
) -> None:
    await stub.Append(
        pb.AppendRequest(
            aggregate_id=aggregate_id,
            aggregate_type="T",
            expected_version=pb.ExpectedVersion(exact=0),
            events=[pb.EventData(event_type="E", data=b"{}") for _ in range(count)],
        ),
        metadata=as_(key),
    )


async def test_calls_over_the_bound_are_refused_before_the_backend_until_one_ends(
    running: RunningServer, storage: GatedStorage, stub: pb_grpc.EventStoreAsyncStub
) -> None:
    for i in range(LIMIT):
        await append(stub, f"{HELD}-{i}", HOLDER, 1)
    storage.gate.clear()
    held = [asyncio.ensure_future(describe(stub, f"{HELD}-{i}")) for i in range(LIMIT)]
    await settles(lambda: storage.waiting == LIMIT)
    calls = storage.calls
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await describe(stub, "free")
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(refused.value)  # type: ignore[arg-type]
    assert status is not None
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert any(detail.Unpack(info) for detail in status.details)
    assert any(detail.Unpack(retry) for detail in status.details)
    assert info.metadata["quota"] == "max_calls_in_flight"
    assert retry.retry_delay.ToNanoseconds() == 100_000_000
    assert storage.calls == calls, "the refused call reached the backend"
    # Another principal has slots of its own.
    await append(stub, "other-1", OTHER, 1)
    storage.gate.set()
    assert [r.version for r in await asyncio.gather(*held)] == [1] * LIMIT
    assert in_flight(running) == 0
    await describe(stub, f"{HELD}-0")


async def test_every_ending_gives_the_slot_back(
    running: RunningServer, storage: GatedStorage, stub: pb_grpc.EventStoreAsyncStub
) -> None:
    await append(stub, f"{HELD}-long", HOLDER, 5)
    storage.gate.clear()

    # Errors: an invalid request (refused inside the call), an unknown aggregate.
    for aggregate_id, code in (("", "INVALID_ARGUMENT"), ("absent", "NOT_FOUND")):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await describe(stub, aggregate_id)
        assert failed.value.code().name == code
        assert in_flight(running) == 0

    # The client cancels unary calls waiting on the backend.
    waiting = [describe(stub, f"{HELD}-{i}") for i in range(LIMIT)]
    await settles(lambda: in_flight(running) == LIMIT and storage.waiting == LIMIT)
    for call in waiting:
        call.cancel()
    await settles(lambda: in_flight(running) == 0 and storage.waiting == 0)

    # A deadline passes.
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await describe(stub, f"{HELD}-late", timeout=0.3)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await settles(lambda: in_flight(running) == 0)

    # Streams abandoned half-way: the first page read, the rest never asked for.
    request = pb.ReadAggregateRequest(aggregate_id=f"{HELD}-long")
    stream = stub.ReadAggregate(request, metadata=as_(HOLDER))
    first = await stream.read()
    assert isinstance(first, pb.ReadAggregateResponse)
    assert len(first.events) == 1
    await settles(lambda: in_flight(running) == 1 and storage.waiting == 1)
    stream.cancel()
    await settles(lambda: in_flight(running) == 0 and storage.waiting == 0)
    # ... or the client's channel closed under it.
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    abandoned = pb_grpc.EventStoreStub(channel).ReadAggregate(request, metadata=as_(HOLDER))
    await abandoned.read()
    await settles(lambda: in_flight(running) == 1)
    await channel.close(grace=None)
    await settles(lambda: in_flight(running) == 0 and storage.waiting == 0)

    # A stream read to its end.
    storage.gate.set()
    pages = [page async for page in stub.ReadAggregate(request, metadata=as_(HOLDER))]
    assert len(pages) == 5
    assert in_flight(running) == 0
    # And the principal has all its slots: LIMIT held at once, one more refused.
    storage.gate.clear()
    held = [describe(stub, f"{HELD}-{i}") for i in range(LIMIT)]
    await settles(lambda: storage.waiting == LIMIT)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await describe(stub, "free")
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for call in held:
        call.cancel()
