"""Durable idempotency: a retry after the server process was killed (SIGKILL) and restarted
still gets the original result, because everything lives in Cassandra."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from eventstore.client import Event, EventStoreClient, ExpectedVersion
from eventstore.config import CassandraSettings
from tests.support import unique

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    def __init__(self, settings: CassandraSettings, port: int, log: Path) -> None:
        self.env = {
            **os.environ,
            "EVENTSTORE_LISTEN": f"127.0.0.1:{port}",
            "EVENTSTORE_CASSANDRA_HOSTS": settings.hosts,
            "EVENTSTORE_CASSANDRA_KEYSPACE": settings.keyspace,
            "EVENTSTORE_AUTH_DISABLED": "true",
        }
        self.address = f"127.0.0.1:{port}"
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, wait_until_serving: bool = True) -> None:
        with self.log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "eventstore.server", env=self.env, stdout=out, stderr=out
            )
        if not wait_until_serving:
            return
        async with grpc.aio.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(900):  # the server itself waits up to startup_timeout_s (60 s)
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                assert self.process.returncode is None, self.log.read_text()
                await asyncio.sleep(0.1)
        raise AssertionError(f"server did not become healthy: {self.log.read_text()}")

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        """SIGTERM, as Kubernetes does; SIGKILL if it is not gone in 30 s."""
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            await self.kill()


@pytest.fixture
async def server_process(
    cassandra_settings: CassandraSettings, tmp_path: Path
) -> AsyncIterator[ServerProcess]:
    proc = ServerProcess(cassandra_settings, free_port(), tmp_path / "server.log")
    yield proc
    if proc.process is not None and proc.process.returncode is None:
        await proc.kill()


async def test_retry_after_server_kill_and_restart_returns_original(
    server_process: ServerProcess,
) -> None:
    aggregate = unique("durable")
    events = [Event("OrderPlaced", {"n": 1}), Event("OrderPaid", {"n": 2})]
    await server_process.start()
    async with EventStoreClient(server_process.address) as client:
        original = await client.append(aggregate, "Order", events, ExpectedVersion.any())
    await server_process.kill()
    await server_process.start()
    async with EventStoreClient(server_process.address) as client:
        retried = await client.append(aggregate, "Order", events, ExpectedVersion.any())
        stored = await client.read_all(aggregate)
    assert retried.already_committed
    assert (retried.first_version, retried.last_version) == (1, 2)
    assert retried.committed_at == original.committed_at
    assert [e.event_id for e in stored] == [e.event_id for e in events]
