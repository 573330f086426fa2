"""Composition root: the only module that knows every concrete class. eventstore-server."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass

import grpc
import structlog
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from eventstore.api.servicer import EventStoreServicer
from eventstore.config import ServerSettings
from eventstore.observability import configure_logging
from eventstore.ports import EventStorage
from eventstore.storage.cassandra import CassandraEventStorage
from eventstore.usecases.append import AppendEvents
from eventstore.usecases.read import DescribeAggregate, ReadAggregate
from eventstore.v1 import eventstore_pb2, eventstore_pb2_grpc

log = structlog.get_logger(__name__)

SERVICE_NAME = eventstore_pb2.DESCRIPTOR.services_by_name["EventStore"].full_name


@dataclass
class RunningServer:
    server: grpc.aio.Server
    storage: EventStorage
    health: health_aio.HealthServicer
    port: int
    owns_storage: bool

    async def stop(self, grace: float) -> None:
        # Report NOT_SERVING first so load balancers stop sending, then drain in-flight RPCs.
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.owns_storage:
            await self.storage.close()


async def start(settings: ServerSettings, storage: EventStorage | None = None) -> RunningServer:
    """Build and start the server; `storage` lets tests pass a fake or a prepared adapter."""
    owns_storage = storage is None
    if storage is None:
        storage = await CassandraEventStorage.connect(settings.cassandra)
    limits = settings.limits.to_limits()
    servicer = EventStoreServicer(
        append=AppendEvents(storage),
        read=ReadAggregate(storage, settings.read_page_size),
        describe=DescribeAggregate(storage),
        limits=limits,
    )
    # Room for the largest valid append plus protobuf framing, so an oversized request reaches
    # our validation (INVALID_ARGUMENT naming the field) instead of a transport error.
    max_message = 2 * limits.max_append_bytes + 1024 * 1024
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
            ("grpc.so_reuseport", 1),
        ],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    eventstore_pb2_grpc.add_EventStoreServicer_to_server(servicer, server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    port = server.add_insecure_port(settings.listen)
    if port == 0:
        raise RuntimeError(f"cannot listen on {settings.listen}")
    await server.start()
    # Storage answered (connect prepared every statement), so we can serve.
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, storage, health_servicer, port, owns_storage)


async def serve(settings: ServerSettings) -> None:
    started = time.monotonic()
    running = await start(settings)
    host = settings.listen.rpartition(":")[0]
    log.info(
        "eventstore server listening",
        address=f"{host}:{running.port}",
        keyspace=settings.cassandra.keyspace,
        startup_s=round(time.monotonic() - started, 2),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", grace_s=settings.grace_period_s)
    await running.stop(settings.grace_period_s)
    log.info("stopped")


def main() -> None:
    settings = ServerSettings()
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
