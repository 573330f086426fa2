"""The gRPC layer over the in-memory fake: status mapping, request ids, no leaked internals."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from eventstore.client import Event, EventStoreClient, InvalidArgumentError
from eventstore.config import LimitSettings, ServerSettings
from eventstore.domain.events import NewEvent
from eventstore.ports import AppendOutcome
from eventstore.server import Components, start
from eventstore.storage.memory import InMemoryEventStorage
from eventstore.v1 import eventstore_pb2 as pb
from eventstore.v1 import eventstore_pb2_grpc as pb_grpc


class ExplodingStorage(InMemoryEventStorage):
    async def append(
        self,
        aggregate_id: str,
        aggregate_type: str,
        expected_version: int,
        events: Sequence[NewEvent],
        recorded_at: datetime,
    ) -> AppendOutcome:
        raise RuntimeError("secret connection string cassandra://admin:hunter2@db")


async def serve(storage: InMemoryEventStorage, **settings: object) -> AsyncIterator[int]:
    running = await start(
        ServerSettings(listen="127.0.0.1:0", **{"auth_disabled": True, **settings}),  # type: ignore[arg-type]
        Components(storage),
    )
    yield running.port
    await running.stop(grace=0)


@pytest.fixture
async def memory_port() -> AsyncIterator[int]:
    async for port in serve(InMemoryEventStorage()):
        yield port


@pytest.fixture
async def exploding_port() -> AsyncIterator[int]:
    async for port in serve(ExplodingStorage()):
        yield port


async def test_unexpected_error_is_internal_with_request_id_and_no_details(
    exploding_port: int,
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{exploding_port}") as channel:
        stub = pb_grpc.EventStoreStub(channel)
        request = pb.AppendRequest(
            aggregate_id="a",
            aggregate_type="T",
            expected_version=pb.ExpectedVersion(exact=0),
            events=[pb.EventData(event_type="E", data=b"{}")],
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Append(request, metadata=[("x-request-id", "req-42")])
    error = caught.value
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in (error.details() or "")
    assert "RuntimeError" not in (error.details() or "")
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.RequestInfo()
    assert any(d.Unpack(info) for d in status.details)
    assert info.request_id == "req-42"


async def test_server_keeps_serving_after_an_internal_error(exploding_port: int) -> None:
    async with EventStoreClient(f"127.0.0.1:{exploding_port}") as client:
        for _ in range(3):
            with pytest.raises(Exception, match="INTERNAL"):
                await client.append("a", "T", [Event("E", {})], expected=0)
        with pytest.raises(Exception, match="NOT_FOUND"):
            await client.get_aggregate("a")


async def test_limits_come_from_settings() -> None:
    limits = LimitSettings(max_event_bytes=64)
    async for port in serve(InMemoryEventStorage(), limits=limits):
        async with EventStoreClient(f"127.0.0.1:{port}") as client:
            await client.append("a", "T", [Event("E", {"x": 1})], expected=0)
            with pytest.raises(InvalidArgumentError) as caught:
                await client.append("a", "T", [Event("E", {"x": "y" * 100})], expected=1)
    assert caught.value.fields == ["events[0]"]
    assert "64" in caught.value.violations[0][1]
