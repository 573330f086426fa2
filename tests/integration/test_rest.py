"""The REST/JSON face (EVENTSTORE_HTTP_LISTEN) on the real stack: every annotated RPC over HTTP,
errors as HTTP statuses with the gRPC details in JSON, Subscribe as server-sent events that
resume with Last-Event-ID."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devstack.certificates import make_ca, make_cert
from eventstore import metrics
from eventstore.config import ServerSettings
from eventstore.server import RunningServer
from tests.integration.conftest import StartServer
from tests.integration.principals import KEYS, permissions_yaml
from tests.integration.test_indexer import IndexerProcess
from tests.integration.test_processes import connections_by_pid, log_events
from tests.integration.test_processes import start as start_workers
from tests.integration.test_publication import server_process

pytestmark = pytest.mark.integration

WRONG_EXPECTED_VERSION = "type.googleapis.com/eventstore.v1.WrongExpectedVersion"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
ANY: dict[str, Any] = {"any": {}}


@pytest.fixture
async def rest(server_settings: ServerSettings, start_server: StartServer) -> RunningServer:
    return await start_server(server_settings.model_copy(update={"http_listen": "127.0.0.1:0"}))


@pytest.fixture
async def secure_rest(
    server_settings: ServerSettings, start_server: StartServer, permissions: Path
) -> RunningServer:
    return await start_server(
        server_settings.model_copy(
            update={
                "http_listen": "127.0.0.1:0",
                "auth_disabled": False,
                "permissions_file": permissions,
                "subscription_heartbeat_s": 0.5,
                "permissions_reload_s": 0.2,
            }
        )
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def url(server: RunningServer, path: str) -> str:
    return f"http://127.0.0.1:{server.http_port}{path}"


def event(event_type: str, body: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    data = base64.b64encode(json.dumps(body).encode()).decode()
    return {"eventId": event_id or str(uuid.uuid4()), "eventType": event_type, "data": data}


def detail(body: dict[str, Any], type_url: str) -> dict[str, Any]:
    (found,) = [d for d in body["details"] if d["@type"] == type_url]
    assert isinstance(found, dict)
    return found


async def call(
    http: aiohttp.ClientSession, method: str, address: str, **options: Any
) -> tuple[int, Any, aiohttp.ClientResponse]:
    async with http.request(method, address, **options) as response:
        return response.status, await response.json(), response


async def test_append_read_get_and_snapshots(
    rest: RunningServer, http: aiohttp.ClientSession
) -> None:
    aggregate = f"order-{uuid.uuid4()}"
    events = url(rest, f"/v1/aggregates/{aggregate}/events")
    first = {
        "aggregateType": "Order",
        "expectedVersion": {"noStream": {}},
        "events": [event("OrderPlaced", {"n": 1}), event("OrderPaid", {"n": 2})],
    }
    status, body, _ = await call(http, "POST", events, json=first)
    assert status == 200, body
    assert (body["firstVersion"], body["lastVersion"]) == ("1", "2")  # int64 as strings
    assert body["alreadyCommitted"] is False
    # The proto's own names are accepted too; an exact expected version.
    second = {
        "aggregate_type": "Order",
        "expected_version": {"exact": "2"},
        "events": [event("OrderShipped", {"n": 3})],
    }
    status, body, _ = await call(http, "POST", events, json=second)
    assert (status, body["firstVersion"]) == (200, "3")

    # The same append again (same event ids): its original result, not a conflict.
    status, body, _ = await call(http, "POST", events, json=second)
    assert (status, body["alreadyCommitted"], body["lastVersion"]) == (200, True, "3")

    stale = {**second, "events": [event("OrderShipped", {"n": 4})]}
    status, body, response = await call(http, "POST", events, json=stale)
    assert status == 409
    assert (body["code"], body["status"]) == (409, "FAILED_PRECONDITION")
    assert detail(body, ERROR_INFO)["reason"] == "WRONG_EXPECTED_VERSION"
    conflict = detail(body, WRONG_EXPECTED_VERSION)
    assert conflict["aggregateId"] == aggregate
    assert conflict["expected"] == {"exact": "2"}
    assert conflict["actualVersion"] == "3"
    assert "Retry-After" not in response.headers

    status, body, _ = await call(http, "GET", events)
    assert status == 200
    assert [e["version"] for e in body["events"]] == ["1", "2", "3"]
    assert [json.loads(base64.b64decode(e["data"]))["n"] for e in body["events"]] == [1, 2, 3]
    assert body["events"][0]["recordedAt"].endswith("Z")

    page = {"from_version": "2", "maxCount": "1"}
    status, body, _ = await call(http, "GET", events, params=page)
    assert [e["eventType"] for e in body["events"]] == ["OrderPaid"]
    status, body, _ = await call(http, "GET", events, params={"direction": "DIRECTION_BACKWARDS"})
    assert [e["version"] for e in body["events"]] == ["3", "2", "1"]

    status, body, _ = await call(http, "GET", url(rest, f"/v1/aggregates/{aggregate}"))
    assert (status, body["version"], body["aggregateType"]) == (200, "3", "Order")

    state = base64.b64encode(b'{"total": 42}').decode()
    snapshots = url(rest, f"/v1/aggregates/{aggregate}/snapshots")
    saved = {"version": "2", "state": state, "stateType": "OrderState", "schemaVersion": 1}
    status, body, _ = await call(http, "POST", snapshots, json=saved)
    assert status == 200, body
    assert body["createdAt"]
    snapshot = url(rest, f"/v1/aggregates/{aggregate}/snapshot")
    status, body, _ = await call(http, "GET", snapshot)
    assert (status, body["version"], body["state"], body["stateType"]) == (
        200,
        "2",
        state,
        "OrderState",
    )
    status, body, _ = await call(http, "GET", snapshot, params={"max_version": "1"})
    assert (status, body["status"]) == (404, "NOT_FOUND")
    assert detail(body, ERROR_INFO)["reason"] == "SNAPSHOT_NOT_FOUND"

    status, body, _ = await call(http, "GET", url(rest, f"/v1/aggregates/{uuid.uuid4()}"))
    assert (status, body["status"]) == (404, "NOT_FOUND")


async def test_query_events(
    rest: RunningServer, http: aiohttp.ClientSession, indexer: IndexerProcess
) -> None:
    await indexer.start()
    aggregate = f"order-{uuid.uuid4()}"
    appended = {
        "aggregateType": "Order",
        "expectedVersion": ANY,
        "events": [event("OrderPlaced", {"n": 1}), event("OrderPaid", {"n": 2})],
    }
    status, body, _ = await call(
        http, "POST", url(rest, f"/v1/aggregates/{aggregate}/events"), json=appended
    )
    assert status == 200, body
    query = [
        ("aggregate_id", aggregate),
        ("event_types", "OrderPlaced"),
        ("event_types", "OrderPaid"),  # a repeated field: the parameter repeated
        ("countTotal", "true"),
        ("visible_event_id", body["eventIds"][-1]),
        ("from", "2000-01-01T00:00:00Z"),
    ]
    deadline = time.monotonic() + 60
    while True:
        status, page, _ = await call(http, "GET", url(rest, "/v1/events"), params=query)
        assert status == 200, page
        if page["freshness"]["eventVisible"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert [e["version"] for e in page["events"]] == ["1", "2"]
    assert page["totalHits"] == "2"
    assert page["nextPageToken"] == ""


async def test_a_deadline_from_grpc_timeout(
    rest: RunningServer, http: aiohttp.ClientSession
) -> None:
    appended = {"aggregateType": "Order", "expectedVersion": ANY, "events": [event("A", {})]}
    address = url(rest, f"/v1/aggregates/order-{uuid.uuid4()}/events")
    status, body, _ = await call(http, "POST", address, json=appended)
    assert status == 200, body
    # No indexer runs: the write never becomes searchable, and the query says so at the
    # deadline the caller set (Grpc-Timeout, as for grpc-gateway), not the server's 10 s.
    query = {"min_consistency_token": body["consistencyToken"]}
    started = time.monotonic()
    status, body, response = await call(
        http, "GET", url(rest, "/v1/events"), params=query, headers={"Grpc-Timeout": "1S"}
    )
    assert time.monotonic() - started < 5
    assert (status, body["status"]) == (504, "DEADLINE_EXCEEDED")
    assert detail(body, ERROR_INFO)["reason"] == "NOT_YET_SEARCHABLE"
    assert response.headers["Retry-After"] == "1"
    status, body, _ = await call(
        http, "GET", url(rest, "/v1/events"), headers={"Grpc-Timeout": "soon"}
    )
    assert (status, detail(body, BAD_REQUEST)["fieldViolations"][0]["field"]) == (
        400,
        "Grpc-Timeout",
    )


async def test_bad_input_is_400_naming_the_field(
    rest: RunningServer, http: aiohttp.ClientSession
) -> None:
    events = url(rest, f"/v1/aggregates/order-{uuid.uuid4()}/events")

    async def refused(method: str, address: str, field: str, **options: Any) -> str:
        status, body, _ = await call(http, method, address, **options)
        assert (status, body["code"], body["status"]) == (400, 400, "INVALID_ARGUMENT"), body
        violations = detail(body, BAD_REQUEST)["fieldViolations"]
        assert [v.get("field", "") for v in violations][:1] == [field], body
        return str(body["message"])

    message = await refused("POST", events, "", data=b'{"events": [', headers=JSON)
    assert "not valid JSON" in message
    await refused("POST", events, "", data=b"[1, 2]", headers=JSON)
    await refused("POST", events, "bogus", json={"bogus": 1})
    await refused(
        "POST", events, "events[0].colour", json={"events": [{"eventType": "A", "colour": 1}]}
    )
    await refused(
        "POST", events, "events[0].data", json={"events": [{"eventType": "A", "data": "!!"}]}
    )
    await refused(
        "POST", events, "expected_version.exact", json={"expectedVersion": {"exact": "x"}}
    )
    # Rules of the server's own validation, reached through the face unchanged.
    await refused("POST", events, "aggregate_type", json={"events": [event("A", {})]})
    await refused(
        "POST",
        events,
        "events[0].event_type",
        json={
            "aggregateType": "Order",
            "expectedVersion": ANY,
            "events": [{"eventType": "not a type!"}],
        },
    )
    await refused("GET", events, "max_count", params={"max_count": "many"})
    await refused("GET", events, "colour", params={"colour": "red"})
    await refused("GET", url(rest, "/v1/events"), "page_size", params={"page_size": "5000"})
    # The path names the aggregate; a different one in the body is a contradiction.
    await refused("POST", events, "aggregate_id", json={"aggregateId": "other"})

    status, body, _ = await call(http, "GET", url(rest, "/v1/nothing-here"))
    assert (status, body["status"]) == (404, "NOT_FOUND")
    status, body, _ = await call(http, "DELETE", events)
    assert status == 405
    status, body, _ = await call(http, "GET", url(rest, "/openapi.json"))
    assert status == 200
    assert "/v1/aggregates/{aggregate_id}/events" in body["paths"]


JSON = {"Content-Type": "application/json"}


async def test_authentication_authorization_and_quotas(
    secure_rest: RunningServer, http: aiohttp.ClientSession
) -> None:
    def as_(name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {KEYS[name]}"}

    order = f"order-{uuid.uuid4()}"
    events = url(secure_rest, f"/v1/aggregates/{order}/events")
    appended = {
        "aggregateType": "Order",
        "expectedVersion": ANY,
        "events": [event("OrderPlaced", {})],
    }

    status, body, _ = await call(http, "POST", events, json=appended)
    assert (status, body["status"]) == (401, "UNAUTHENTICATED")
    status, body, _ = await call(
        http, "POST", events, json=appended, headers={"Authorization": "Bearer nope"}
    )
    assert (status, body["status"]) == (401, "UNAUTHENTICATED")
    status, body, _ = await call(http, "POST", events, json=appended, headers=as_("orders"))
    assert status == 200, body
    # billing may append Invoice only, and read nothing.
    status, body, _ = await call(http, "POST", events, json=appended, headers=as_("billing"))
    assert (status, body["status"]) == (403, "PERMISSION_DENIED")
    assert detail(body, ERROR_INFO)["reason"] == "PERMISSION_DENIED"
    # Reading an aggregate of a type it may not see: as gRPC answers, it does not exist for it
    # (a 403 would confirm that it exists).
    status, body, _ = await call(http, "GET", events, headers=as_("billing"))
    assert (status, body["status"]) == (404, "NOT_FOUND")

    # payments: 20 events/s. One append of 60 is admitted (a burst is not refused forever);
    # the next waits for the bucket to refill: 429, Retry-After in whole seconds.
    payment = url(secure_rest, f"/v1/aggregates/payment-{uuid.uuid4()}/events")
    burst = {
        "aggregateType": "Payment",
        "expectedVersion": ANY,
        "events": [event("Paid", {}) for _ in range(60)],
    }
    status, body, _ = await call(http, "POST", payment, json=burst, headers=as_("payments"))
    assert status == 200, body
    more = {"aggregateType": "Payment", "expectedVersion": ANY, "events": [event("Paid", {})]}
    status, body, response = await call(http, "POST", payment, json=more, headers=as_("payments"))
    assert (status, body["status"]) == (429, "RESOURCE_EXHAUSTED")
    assert detail(body, ERROR_INFO)["reason"] == "QUOTA_EXCEEDED"
    assert 2 <= int(response.headers["Retry-After"]) <= 4  # about (60 - 20) / 20 s


async def sse(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, str]]:
    """The server-sent events of a response, each as its fields."""
    fields: dict[str, str] = {}
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if fields:
                yield fields
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


async def append(
    http: aiohttp.ClientSession, server: RunningServer, aggregate: str, n: int
) -> None:
    body = {
        "aggregateType": "Order",
        "expectedVersion": ANY,
        "events": [event("OrderNoted", {"n": n})],
    }
    status, answer, _ = await call(
        http, "POST", url(server, f"/v1/aggregates/{aggregate}/events"), json=body
    )
    assert status == 200, answer


async def test_subscribe_as_server_sent_events_resumes_with_last_event_id(
    rest: RunningServer, http: aiohttp.ClientSession
) -> None:
    aggregate = f"order-{uuid.uuid4()}"
    for n in (1, 2):
        await append(http, rest, aggregate, n)
    subscribe = url(rest, "/v1/events:subscribe")
    params = {"aggregate_id": aggregate, "from_beginning": "true"}
    received: list[str] = []
    last_id = ""
    async with http.get(subscribe, params=params) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        async for message in sse(response):
            last_id = message["id"]
            if message["event"] == "caught_up":
                break
            assert message["event"] == "event"
            received.append(json.loads(message["data"])["version"])
    assert received == ["1", "2"]

    # Written while nobody listened; then the EventSource reconnects with Last-Event-ID.
    for n in (3, 4):
        await append(http, rest, aggregate, n)
    resumed: list[str] = []
    async with http.get(subscribe, params=params, headers={"Last-Event-ID": last_id}) as response:
        assert response.status == 200
        async for message in sse(response):
            if message["event"] == "event":
                resumed.append(json.loads(message["data"])["version"])
            if len(resumed) == 2:
                await append(http, rest, aggregate, 5)  # live, after the history
            if len(resumed) == 3:
                break
    assert resumed == ["3", "4", "5"]  # nothing lost, nothing twice


def open_subscriptions() -> float:
    return float(metrics.SUBSCRIPTIONS._value.get())


async def test_a_client_that_goes_away_ends_its_subscription(
    rest: RunningServer, http: aiohttp.ClientSession
) -> None:
    before = open_subscriptions()
    params = {"aggregate_types": "Order", "from_end": ""}
    async with http.get(url(rest, "/v1/events:subscribe"), params=params) as response:
        assert response.status == 200
        async for message in sse(response):
            assert message["event"] == "caught_up"
            break
        assert open_subscriptions() == before + 1
    # Leaving the block closes the connection mid-stream; no heartbeat need be due for the
    # server to notice (heartbeats here are 15 s apart).
    for _ in range(100):  # 5 s
        if open_subscriptions() == before:
            break
        await asyncio.sleep(0.05)
    assert open_subscriptions() == before


async def test_an_error_mid_stream_is_a_last_error_event(
    secure_rest: RunningServer, http: aiohttp.ClientSession, permissions: Path
) -> None:
    headers = {"Authorization": f"Bearer {KEYS['auditor']}"}
    params = {"aggregate_types": "Order", "from_end": ""}
    kinds: list[str] = []
    async with http.get(
        url(secure_rest, "/v1/events:subscribe"), params=params, headers=headers
    ) as response:
        assert response.status == 200
        async for message in sse(response):
            kinds.append(message["event"])
            if message["event"] == "caught_up":
                # The auditor's key is removed: the stream ends at its next heartbeat.
                keys = {name: [KEYS[name]] for name in ("orders", "payments", "billing")}
                await asyncio.to_thread(permissions.write_text, permissions_yaml(keys, {}))
            if message["event"] == "error":
                error = json.loads(message["data"])
                break
    assert kinds[0] == "caught_up"
    assert kinds[-1] == "error"
    assert (error["code"], error["status"]) == (401, "UNAUTHENTICATED")


async def test_subscribe_refused_before_the_stream_starts(
    secure_rest: RunningServer, http: aiohttp.ClientSession
) -> None:
    subscribe = url(secure_rest, "/v1/events:subscribe")
    headers = {"Authorization": f"Bearer {KEYS['billing']}"}
    status, body, _ = await call(
        http, "GET", subscribe, params={"aggregate_types": "Order"}, headers=headers
    )
    assert (status, body["status"]) == (403, "PERMISSION_DENIED")
    status, body, _ = await call(
        http, "GET", subscribe, params={"checkpoint": "garbage"}, headers=headers
    )
    assert (status, body["status"]) == (400, "INVALID_ARGUMENT")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pki")
    make_ca("ca", path)
    make_cert("server", "ca", path, san="IP:127.0.0.1,DNS:localhost")
    make_cert("client", "ca", path)
    return path


async def test_https_with_the_grpc_ports_certificates(
    server_settings: ServerSettings, start_server: StartServer, pki: Path
) -> None:
    server = await start_server(
        server_settings.model_copy(
            update={
                "http_listen": "127.0.0.1:0",
                "tls_cert_file": pki / "server.crt",
                "tls_key_file": pki / "server.key",
                "tls_client_ca_file": pki / "ca.crt",
            }
        )
    )
    address = f"https://127.0.0.1:{server.http_port}/v1/aggregates/{uuid.uuid4()}"
    trusted = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    async with aiohttp.ClientSession() as session:
        # Mutual TLS on the gRPC port: a client certificate on the REST port too.
        with pytest.raises(aiohttp.ClientError):
            async with session.get(address, ssl=trusted) as response:
                await response.read()
        with pytest.raises(aiohttp.ClientError):
            async with session.get(address.replace("https", "http")) as response:
                await response.read()
        trusted.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
        async with session.get(address, ssl=trusted) as response:
            assert response.status == 404  # served: no such aggregate


async def test_worker_processes_share_the_rest_port(
    server_settings: ServerSettings, tmp_path: Path
) -> None:
    proc = server_process(server_settings, tmp_path)
    proc.env["EVENTSTORE_PROCESSES"] = "2"
    proc.env["EVENTSTORE_HTTP_LISTEN"] = "127.0.0.1:0"  # the supervisor picks one for both
    try:
        workers = await start_workers(proc)
        (supervisor,) = log_events(proc, "starting worker processes")
        port = int(supervisor["http"].rpartition(":")[2])
        assert port != 0
        aggregates = [f"order-{uuid.uuid4()}" for _ in range(16)]
        async with AsyncExitStack() as stack:
            # A connection per session, which the kernel hands to either worker.
            sessions = [
                await stack.enter_async_context(aiohttp.ClientSession()) for _ in aggregates
            ]
            for session, aggregate in zip(sessions, aggregates, strict=True):
                body = {
                    "aggregateType": "Order",
                    "expectedVersion": ANY,
                    "events": [event("A", {})],
                }
                address = f"http://127.0.0.1:{port}/v1/aggregates/{aggregate}/events"
                status, answer, _ = await call(session, "POST", address, json=body)
                assert status == 200, answer
            served = connections_by_pid(port, workers.values())
            assert sum(served.values()) == len(sessions), served
            assert all(served.values()), f"one worker got every connection: {served}"
    finally:
        if proc.process is not None and proc.process.returncode is None:
            proc.process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.process.wait(), 30) == 0


async def test_schemas_over_rest_and_reads_upcast_to_the_latest(
    rest: RunningServer, http: aiohttp.ClientSession
) -> None:
    kind = f"Order{uuid.uuid4().hex[:8]}"
    schemas = url(rest, f"/v1/schemas/{kind}/Placed")

    def schema(document: dict[str, Any]) -> str:
        return base64.b64encode(json.dumps(document).encode()).decode()

    v1 = {
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "required": ["name"],
        "additionalProperties": False,
    }
    status, body, _ = await call(
        http, "POST", schemas, json={"format": "SCHEMA_FORMAT_JSON_SCHEMA", "document": schema(v1)}
    )
    assert (status, body["schema"]["version"]) == (200, 1), body
    aggregate = f"order-{uuid.uuid4()}"
    events = url(rest, f"/v1/aggregates/{aggregate}/events")
    append = {
        "aggregateType": kind,
        "expectedVersion": ANY,
        "events": [event("Placed", {"name": "A"})],
    }
    status, body, _ = await call(http, "POST", events, json=append)
    assert status == 200, body

    # v2 renames the field; the upcast says how.
    v2 = {
        "type": "object",
        "properties": {"full_name": {"type": "string"}},
        "required": ["full_name"],
    }
    upcast = json.dumps([{"op": "rename", "path": "/name", "to": "full_name"}])
    register = {"format": "SCHEMA_FORMAT_JSON_SCHEMA", "document": schema(v2), "upcastJson": upcast}
    status, body, _ = await call(http, "POST", schemas, json=register)
    assert (status, body["schema"]["version"]) == (200, 2), body

    # Data that breaks v2 is refused naming the event's data.
    bad = {**append, "events": [event("Placed", {"full_name": 7})]}
    status, body, _ = await call(http, "POST", events, json=bad)
    assert (status, body["status"]) == (400, "INVALID_ARGUMENT"), body
    violations = detail(body, BAD_REQUEST)["fieldViolations"]
    assert [v["field"] for v in violations] == ["events[0].data"]

    status, body, _ = await call(http, "GET", url(rest, f"/v1/schemas/{kind}"))
    assert [(s["eventType"], s["version"]) for s in body["schemas"]] == [
        ("Placed", 1),
        ("Placed", 2),
    ]
    status, body, _ = await call(http, "GET", schemas, params={"version": "1"})
    assert json.loads(base64.b64decode(body["schema"]["document"])) == v1

    status, body, _ = await call(http, "GET", events)
    assert json.loads(base64.b64decode(body["events"][0]["data"])) == {"name": "A"}
    status, body, _ = await call(http, "GET", events, params={"schema_view": "SCHEMA_VIEW_LATEST"})
    (latest,) = body["events"]
    assert json.loads(base64.b64decode(latest["data"])) == {"full_name": "A"}
    assert latest["schemaVersion"] == 2
