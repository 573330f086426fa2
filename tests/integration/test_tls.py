"""Transport security: TLS, and mutual TLS with a client CA (certificates made with openssl)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.certificates import make_ca, make_cert
from eventstore.client import ClientError, Event, EventStoreClient, RetryPolicy, TlsOptions
from eventstore.config import ServerSettings
from eventstore.server import Components, RunningServer, start
from eventstore.storage.cassandra import CassandraEventStorage
from eventstore.v1 import eventstore_pb2 as pb
from eventstore.v1 import eventstore_pb2_grpc as pb_grpc
from tests.integration.test_restart import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pki")
    make_ca("ca", path)
    make_ca("other-ca", path)
    make_cert("server", "ca", path, san="IP:127.0.0.1,DNS:localhost")
    make_cert("client", "ca", path)
    make_cert("stranger", "other-ca", path)
    return path


async def serve(settings: ServerSettings, storage: CassandraEventStorage) -> RunningServer:
    return await start(settings, Components(storage=storage))


@pytest.fixture
async def tls_server(
    server_settings: ServerSettings, cassandra_storage: CassandraEventStorage, pki: Path
) -> AsyncIterator[RunningServer]:
    settings = server_settings.model_copy(
        update={"tls_cert_file": pki / "server.crt", "tls_key_file": pki / "server.key"}
    )
    running = await serve(settings, cassandra_storage)
    yield running
    await running.stop(grace=1)


@pytest.fixture
async def mtls_server(
    server_settings: ServerSettings, cassandra_storage: CassandraEventStorage, pki: Path
) -> AsyncIterator[RunningServer]:
    settings = server_settings.model_copy(
        update={
            "tls_cert_file": pki / "server.crt",
            "tls_key_file": pki / "server.key",
            "tls_client_ca_file": pki / "ca.crt",
        }
    )
    running = await serve(settings, cassandra_storage)
    yield running
    await running.stop(grace=1)


async def append_with(address: str, tls: TlsOptions | None) -> int:
    async with EventStoreClient(
        address, tls=tls, retry=RetryPolicy(attempts=1), timeout_s=5
    ) as client:
        result = await client.append("tls-check", "T", [Event("E", {})])
        return result.last_version


async def test_tls_server_refuses_plaintext(tls_server: RunningServer, pki: Path) -> None:
    address = f"127.0.0.1:{tls_server.port}"
    with pytest.raises(ClientError) as caught:
        await append_with(address, None)
    assert caught.value.code.name == "UNAVAILABLE"
    assert await append_with(address, TlsOptions(ca_file=str(pki / "ca.crt"))) >= 1


async def test_mutual_tls_needs_a_certificate_from_the_client_ca(
    mtls_server: RunningServer, pki: Path
) -> None:
    address = f"127.0.0.1:{mtls_server.port}"
    ca = str(pki / "ca.crt")
    with pytest.raises(ClientError):
        await append_with(address, TlsOptions(ca_file=ca))  # no client certificate
    with pytest.raises(ClientError):
        await append_with(
            address,
            TlsOptions(
                ca_file=ca, cert_file=str(pki / "stranger.crt"), key_file=str(pki / "stranger.key")
            ),
        )
    valid = TlsOptions(
        ca_file=ca, cert_file=str(pki / "client.crt"), key_file=str(pki / "client.key")
    )
    assert await append_with(address, valid) >= 1


async def test_probes_get_plaintext_health_and_nothing_else_beside_a_tls_port(
    server_settings: ServerSettings, cassandra_storage: CassandraEventStorage, pki: Path
) -> None:
    health_port = free_port()
    settings = server_settings.model_copy(
        update={
            "tls_cert_file": pki / "server.crt",
            "tls_key_file": pki / "server.key",
            "tls_client_ca_file": pki / "ca.crt",
            "health_listen": f"127.0.0.1:{health_port}",
        }
    )
    running = await serve(settings, cassandra_storage)
    stopped = False
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{health_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "eventstore.v1.EventStore"):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            # No data on this port: the event store's own service is not there at all.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await pb_grpc.EventStoreStub(channel).GetAggregate(
                    pb.GetAggregateRequest(aggregate_id="tls-check"), timeout=5
                )
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
            await running.stop(grace=1)
            stopped = True
            with pytest.raises(grpc.aio.AioRpcError) as gone:  # it stops with the server
                await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert gone.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        if not stopped:
            await running.stop(grace=0)
