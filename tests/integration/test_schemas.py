"""Versioned event schemas against the real services: validation on append, compatibility on
registration, and upcasting on every read path (ReadAggregate, Subscribe for one aggregate and
wide, QueryEvents, SubscribeGroup, the replay CLI). Stored events are never rewritten."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2

from eventstore.client import (
    AggregateNotFoundError,
    Compatibility,
    Event,
    EventStoreClient,
    InvalidArgumentError,
    SchemaFormat,
    SchemaIncompatibleError,
    SubscriptionMessage,
)
from eventstore.config import KafkaSettings, OpenSearchSettings, ServerSettings
from eventstore.domain.events import RecordedEvent
from eventstore.server import RunningServer
from eventstore.v1 import eventstore_pb2 as pb
from eventstore.wire.events import schema_version
from tests.integration.conftest import StartServer
from tests.integration.test_indexer import IndexerProcess, wait_for_count
from tests.integration.test_replay import replay
from tests.support import unique

pytestmark = pytest.mark.integration

V1 = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "amount": {"type": "number"}},
    "required": ["name", "amount"],
    # Closed: with an open v1, a v1 event could already hold any "currency", which the upcast
    # keeps and v2's enum refuses (backward compatibility would be refused, rightly).
    "additionalProperties": False,
}
V2 = {
    "type": "object",
    "properties": {
        "full_name": {"type": "string", "x-personal": True},
        "amount": {"type": "number"},
        "currency": {"type": "string", "enum": ["EUR", "USD"]},
    },
    "required": ["full_name", "amount", "currency"],
}
UPCAST_V2 = [
    {"op": "rename", "path": "/name", "to": "full_name"},
    {"op": "add", "path": "/currency", "value": "EUR"},
]
#: What the v1 event reads as under v2.
V1_AS_V2 = {"full_name": "Ada", "amount": 5, "currency": "EUR"}
V2_DATA = {"full_name": "Bob", "amount": 7, "currency": "USD"}


@pytest.fixture
async def indexer(
    kafka_settings: KafkaSettings, opensearch_settings: OpenSearchSettings, tmp_path: Path
) -> AsyncIterator[IndexerProcess]:
    proc = IndexerProcess(kafka_settings, opensearch_settings, tmp_path / "indexer.log")
    await proc.start()
    yield proc
    await proc.kill()


def _data(event: RecordedEvent) -> Any:
    return json.loads(event.data)


def _assert_latest(events: list[RecordedEvent]) -> None:
    assert [_data(e) for e in events] == [V1_AS_V2, V2_DATA]
    assert [schema_version(e) for e in events] == [2, 2]


async def _subscribed(messages: AsyncIterator[SubscriptionMessage], count: int) -> list[Any]:
    events: list[RecordedEvent] = []
    async with asyncio.timeout(60):
        async for message in messages:
            if message.event is not None:
                events.append(message.event)
            if len(events) == count:
                break
    return events


async def test_a_v1_event_reads_back_as_v2_on_every_read_path(
    server: RunningServer,
    client: EventStoreClient,
    opensearch_settings: OpenSearchSettings,
    indexer: IndexerProcess,
) -> None:
    kind = unique("Payment").replace("-", "")
    aggregate = unique("pay")
    first = await client.register_schema(kind, "Paid", V1)
    assert (first.version, first.compatibility) == (1, Compatibility.BACKWARD)
    await client.append(aggregate, kind, [Event("Paid", {"name": "Ada", "amount": 5})])
    second = await client.register_schema(kind, "Paid", V2, upcast=UPCAST_V2)
    assert second.version == 2
    await client.append(aggregate, kind, [Event("Paid", V2_DATA, schema_version=2)])

    # As stored (the default, what old clients get): the v1 event is untouched.
    stored = await client.read_all(aggregate)
    assert [_data(e) for e in stored] == [{"name": "Ada", "amount": 5}, V2_DATA]
    assert [schema_version(e) for e in stored] == [1, 2]

    _assert_latest(await client.read_all(aggregate, schema_view="latest"))
    _assert_latest(
        await _subscribed(client.subscribe(aggregate_id=aggregate, schema_view="latest"), 2)
    )
    _assert_latest(
        await _subscribed(client.subscribe(aggregate_types=[kind], schema_view="latest"), 2)
    )
    async with client.subscribe_group(
        unique("g"), aggregate_types=[kind], schema_view="latest"
    ) as member:
        delivered: list[RecordedEvent] = []
        async with asyncio.timeout(60):
            async for delivery in member:
                delivered.append(delivery.event)
                await member.ack(delivery)
                if len(delivered) == 2:
                    break
    _assert_latest(delivered)

    await wait_for_count(opensearch_settings, 2)
    _assert_latest(await client.query_all(aggregate_types=[kind], schema_view="latest"))
    # The index keeps what was stored.
    indexed = await client.query_all(aggregate_types=[kind])
    assert [schema_version(e) for e in indexed] == [1, 2]
    assert _data(indexed[0]) == {"name": "Ada", "amount": 5}

    code, out, err = await replay(server, "export", "--aggregate-types", kind, "--upcast", "latest")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["data"] for line in lines] == [V1_AS_V2, V2_DATA]
    assert [line["metadata"]["$schema_version"] for line in lines] == ["2", "2"]

    # Nothing was rewritten: reading as stored still gives the original bytes.
    assert [e.data for e in await client.read_all(aggregate)] == [e.data for e in stored]


async def test_a_payload_that_breaks_its_schema_is_refused_naming_event_and_path(
    client: EventStoreClient,
) -> None:
    kind = unique("Payment").replace("-", "")
    aggregate = unique("pay")
    await client.register_schema(kind, "Paid", V1)
    await client.register_schema(kind, "Paid", V2, upcast=UPCAST_V2)
    with pytest.raises(InvalidArgumentError) as caught:
        await client.append(
            aggregate,
            kind,
            [
                Event("Paid", V2_DATA, schema_version=2),
                Event("Paid", {**V2_DATA, "amount": "seven"}, schema_version=2),
            ],
        )
    assert caught.value.fields == ["events[1].data"]
    assert "$.amount" in caught.value.violations[0][1]
    # Latest (schema_version 0) is v2 now: a v1 payload does not pass as it.
    with pytest.raises(InvalidArgumentError) as caught:
        await client.append(aggregate, kind, [Event("Paid", {"name": "Ada", "amount": 1})])
    assert caught.value.fields == ["events[0].data"]
    with pytest.raises(InvalidArgumentError) as caught:
        await client.append(aggregate, kind, [Event("Paid", V2_DATA, schema_version=3)])
    assert caught.value.fields == ["events[0].schema_version"]
    with pytest.raises(AggregateNotFoundError):  # nothing was written
        await client.get_aggregate(aggregate)
    # Types without a schema behave as before.
    await client.append(aggregate, kind, [Event("Noted", {"anything": True})])
    (noted,) = await client.read_all(aggregate, schema_view="latest")
    assert schema_version(noted) == 0
    assert "$schema_version" not in noted.metadata


async def test_an_incompatible_version_is_refused_under_backward(
    client: EventStoreClient,
) -> None:
    kind = unique("Payment").replace("-", "")
    await client.register_schema(kind, "Paid", V1)
    await client.register_schema(kind, "Paid", V2, upcast=UPCAST_V2)
    v3 = json.loads(json.dumps(V2))
    v3["properties"]["amount"] = {"type": "string"}  # v2 events would not read as v3
    with pytest.raises(SchemaIncompatibleError) as caught:
        await client.register_schema(kind, "Paid", v3)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert [path for path, _ in caught.value.problems] == ["$.amount"]
    # Widening is compatible; registering the same content again is a no-op.
    v3["properties"]["amount"] = {"type": ["number", "string"]}
    third = await client.register_schema(kind, "Paid", v3)
    again = await client.register_schema(kind, "Paid", v3)
    assert third.version == again.version == 3
    listed = await client.list_schemas(kind)
    assert [(s.event_type, s.version, s.document) for s in listed] == [
        ("Paid", 1, b""),
        ("Paid", 2, b""),
        ("Paid", 3, b""),
    ]
    fetched = await client.get_schema(kind, "Paid", 2)
    assert json.loads(fetched.document) == V2
    assert [op.to_json() for op in fetched.upcast] == UPCAST_V2


async def test_the_cli_registers_from_a_file(
    server: RunningServer, client: EventStoreClient, tmp_path: Path
) -> None:
    kind = unique("Payment").replace("-", "")
    spec = tmp_path / "paid-v1.json"
    spec.write_text(json.dumps({"aggregate_type": kind, "event_type": "Paid", "schema": V1}))
    code, out, err = await replay(server, "schemas", "register", str(spec))
    assert code == 0, err
    assert out.strip() == f"{kind}/Paid version 1 (backward)"
    code, out, err = await replay(server, "schemas", "list", kind)
    assert code == 0, err
    assert [json.loads(line)["version"] for line in out.splitlines()] == [1]
    assert (await client.get_schema(kind, "Paid")).version == 1


def _descriptor_set(*fields: tuple[str, int, int]) -> bytes:
    message = descriptor_pb2.DescriptorProto(name="Paid")
    for name, number, kind in fields:
        message.field.add(
            name=name,
            number=number,
            type=kind,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        )
    file = descriptor_pb2.FileDescriptorProto(
        name="payments.proto", package="payments", syntax="proto3", message_type=[message]
    )
    return descriptor_pb2.FileDescriptorSet(file=[file]).SerializeToString()


async def test_protobuf_schemas_validate_payloads_and_field_numbers(
    client: EventStoreClient,
) -> None:
    kind = unique("Payment").replace("-", "")
    aggregate = unique("pay")
    string, int64 = (
        descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    )
    await client.register_schema(
        kind,
        "Paid",
        _descriptor_set(("name", 1, string), ("amount", 2, int64)),
        schema_format=SchemaFormat.PROTOBUF,
        message_name="payments.Paid",
    )
    protobuf = "application/x-protobuf"
    await client.append(
        aggregate, kind, [Event("Paid", b"\x0a\x03Ada\x10\x05", content_type=protobuf)]
    )
    with pytest.raises(InvalidArgumentError) as caught:
        await client.append(aggregate, kind, [Event("Paid", b"\x0a\xff", content_type=protobuf)])
    assert caught.value.fields == ["events[0].data"]
    with pytest.raises(InvalidArgumentError) as caught:
        await client.append(aggregate, kind, [Event("Paid", {"name": "Ada"})])
    assert caught.value.fields == ["events[0].content_type"]
    with pytest.raises(SchemaIncompatibleError) as incompatible:
        await client.register_schema(
            kind,
            "Paid",
            _descriptor_set(("name", 1, string), ("amount", 2, string)),
            schema_format=SchemaFormat.PROTOBUF,
            message_name="payments.Paid",
        )
    assert [path for path, _ in incompatible.value.problems] == ["$.amount"]
    (stored,) = await client.read_all(aggregate, schema_view="latest")
    assert schema_version(stored) == 1


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"format": pb.SCHEMA_FORMAT_UNSPECIFIED}, "format"),
        ({"document": b"{not json"}, "document"),
        ({"document": b'{"type": 12}'}, "document.type"),
        ({"document": b"{}" + b" " * 70_000}, "document"),
        ({"aggregate_type": ""}, "aggregate_type"),
        ({"event_type": "bad type!"}, "event_type"),
        ({"upcast_json": "[1]"}, "upcast_json[0]"),
        ({"upcast_json": "{"}, "upcast_json"),
        ({"compatibility": 99}, "compatibility"),
        ({"version": -1}, "version"),
        ({"message_name": "x"}, "message_name"),
    ],
)
async def test_bad_registrations_name_the_field(
    client: EventStoreClient, request_fields: dict[str, Any], field: str
) -> None:
    request = pb.RegisterSchemaRequest(
        aggregate_type="Payment",
        event_type="Paid",
        format=pb.SCHEMA_FORMAT_JSON_SCHEMA,
        document=b"{}",
    )
    for name, value in request_fields.items():
        setattr(request, name, value)
    with pytest.raises(InvalidArgumentError) as caught:
        await client._with_retries(client._stub.RegisterSchema, request)
    assert caught.value.fields == [field]


async def test_the_replay_cli_folds_upcast_events(
    server: RunningServer, client: EventStoreClient
) -> None:
    kind = unique("Counter").replace("-", "")
    aggregate = unique("count")
    closed = {"type": "object", "additionalProperties": False}
    await client.register_schema(kind, "Added", {**closed, "properties": {"amount": {}}})
    await client.append(aggregate, kind, [Event("Added", {"amount": 2}), Event("Added", {})])
    await client.register_schema(
        kind,
        "Added",
        {**closed, "properties": {"n": {"type": "integer"}}, "required": ["n"]},
        upcast=[
            {"op": "rename", "path": "/amount", "to": "n"},
            {"op": "add", "path": "/n", "value": 1},
        ],
        compatibility=Compatibility.NONE,  # v1's "amount" was of any type
    )
    reducer = ("--reducer", "replayer.examples.counter:reduce")
    code, out, err = await replay(server, "state", aggregate, *reducer)
    assert code == 0, err
    assert json.loads(out)["total"] == 0, "as stored, no event has an n"
    code, out, err = await replay(server, "state", aggregate, *reducer, "--upcast", "latest")
    assert code == 0, err
    assert json.loads(out)["total"] == 3


@pytest.fixture
async def quick_client(
    server_settings: ServerSettings, start_server: StartServer
) -> AsyncIterator[EventStoreClient]:
    """A server whose groups park an event after two quick attempts."""
    settings = server_settings.model_copy(
        update={"group_max_attempts": 2, "group_max_backoff_s": 0.2, "group_ack_timeout_s": 5.0}
    )
    running = await start_server(settings)
    async with EventStoreClient(f"127.0.0.1:{running.port}") as c:
        yield c


async def test_parked_events_list_upcast(quick_client: EventStoreClient) -> None:
    client = quick_client
    kind, group = unique("Payment").replace("-", ""), unique("g")
    await client.register_schema(kind, "Paid", V1)
    await client.append(unique("pay"), kind, [Event("Paid", {"name": "Ada", "amount": 5})])
    await client.register_schema(kind, "Paid", V2, upcast=UPCAST_V2)

    async def reject_everything() -> None:
        async with client.subscribe_group(group, aggregate_types=[kind]) as member:
            async for delivery in member:
                await member.nack(delivery, reason="no")

    rejecting = asyncio.create_task(reject_everything())
    try:
        deadline = time.monotonic() + 60
        while not (parked := await client.parked(group, schema_view="latest")):
            assert time.monotonic() < deadline, "the event was not parked"
            await asyncio.sleep(0.3)
    finally:
        rejecting.cancel()
        await asyncio.gather(rejecting, return_exceptions=True)
    assert [json.loads(p.event.data) for p in parked] == [V1_AS_V2]
    assert schema_version(parked[0].event) == 2
    (as_stored,) = await client.parked(group)
    assert schema_version(as_stored.event) == 1
