"""Health: NOT_SERVING (and RPCs refused) until Cassandra answers; NOT_SERVING while shutting
down."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from eventstore.client import Event, EventStoreClient, RetryPolicy, UnavailableError
from eventstore.config import ServerSettings
from eventstore.server import Components, start
from eventstore.storage.cassandra import CassandraEventStorage
from tests.integration.test_publication import server_process
from tests.integration.test_restart import free_port

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def health(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="eventstore.v1.EventStore"), timeout=5
        )
        return int(reply.status)


async def proxy(listen_port: int, target: tuple[str, int]) -> asyncio.Server:
    """A TCP forwarder: 'Cassandra' appears at listen_port when this starts."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*target)
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    return await asyncio.start_server(handle, "127.0.0.1", listen_port)


async def test_serving_only_once_cassandra_answers(
    server_settings: ServerSettings, tmp_path: Path
) -> None:
    hosts, port = server_settings.cassandra.contact_points()
    late_port = free_port()
    proc = server_process(server_settings, tmp_path)
    proc.env["EVENTSTORE_CASSANDRA_HOSTS"] = f"127.0.0.1:{late_port}"
    proc.env["EVENTSTORE_CASSANDRA_REQUEST_TIMEOUT_S"] = "1"
    await proc.start(wait_until_serving=False)
    forwarder = None
    try:
        for _ in range(100):  # the port opens at once, before any backend answers
            with contextlib.suppress(grpc.aio.AioRpcError):
                assert await health(proc.address) == NOT_SERVING
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the server never opened its port")
        async with EventStoreClient(proc.address, retry=RetryPolicy(attempts=1)) as client:
            with pytest.raises(UnavailableError):
                await client.append("early", "T", [Event("E", {})])
        await asyncio.sleep(1)
        assert await health(proc.address) == NOT_SERVING
        forwarder = await proxy(late_port, (hosts[0], port))
        for _ in range(200):
            if await health(proc.address) == SERVING:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("never SERVING after Cassandra appeared")
        async with EventStoreClient(proc.address) as client:
            result = await client.append("early", "T", [Event("E", {})])
            assert result.first_version == 1
    finally:
        await proc.kill()
        if forwarder is not None:
            forwarder.close()


async def test_not_serving_while_shutting_down(
    server_settings: ServerSettings, cassandra_storage: CassandraEventStorage
) -> None:
    running = await start(server_settings, Components(storage=cassandra_storage))
    address = f"127.0.0.1:{running.port}"
    assert await health(address) == SERVING
    stopping = asyncio.create_task(running.stop(grace=2))
    await asyncio.sleep(0.2)  # draining: still listening, no longer serving
    assert await health(address) == NOT_SERVING
    await stopping
