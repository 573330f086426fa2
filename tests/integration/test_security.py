"""Authentication, authorization per aggregate type, the recorded principal and key rotation,
against the real stack (Cassandra, Kafka, OpenSearch). The principals are those of
principals.py; what one principal can do to, or learn of, another's types and how much it can
consume are in test_hostile_principal.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.certificates import make_ca, make_cert
from eventstore.client import (
    ClientError,
    Event,
    EventStoreClient,
    InvalidArgumentError,
    PermissionDeniedError,
    RetryPolicy,
    TlsOptions,
    UnauthenticatedError,
)
from eventstore.config import CassandraSettings, ServerSettings
from eventstore.domain.access import PRINCIPAL_KEY
from eventstore.domain.events import Direction
from eventstore.server import RunningServer
from eventstore.storage.cassandra import CassandraEventStorage
from eventstore.v1 import eventstore_pb2, eventstore_pb2_grpc
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
from tests.integration.test_subscribe import Collector, events_at_least

pytestmark = pytest.mark.integration


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
