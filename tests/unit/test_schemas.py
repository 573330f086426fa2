"""Event schemas without services: compatibility rules, upcasts, validation, the cache that
keeps Cassandra off the append path, authorization and limits of registration."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf import descriptor_pb2

from eventstore.domain.access import Operation, PermissionDenied, Principal
from eventstore.domain.errors import InvalidArgument
from eventstore.domain.events import (
    SCHEMA_VERSION_KEY,
    AppendRequest,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
)
from eventstore.domain.schemas import (
    Compatibility,
    CompiledSchema,
    SchemaFormat,
    SchemaIncompatible,
    SchemaLimits,
    SchemaRegistration,
    SchemaVersion,
    SchemaVersionConflict,
    check_registration,
    compatibility_problems,
    covers,
    parse_upcast,
    personal_paths,
    upcast,
)
from eventstore.ports import SchemaRegistry
from eventstore.storage.memory import InMemorySchemaRegistry
from eventstore.usecases.schemas import SchemaCatalog, Schemas

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LIMITS = SchemaLimits()
ADMIN = Principal(
    "admin",
    {Operation.REGISTER_SCHEMA: frozenset({"Order"}), Operation.READ: frozenset({"Order"})},
)


def ops(*operations: dict[str, Any]) -> Any:
    return parse_upcast(list(operations), LIMITS)


def json_version(
    number: int,
    schema: Any,
    upcast_ops: Any = (),
    mode: Compatibility = Compatibility.BACKWARD,
) -> SchemaVersion:
    return SchemaVersion(
        "Order",
        "Placed",
        number,
        SchemaFormat.JSON_SCHEMA,
        json.dumps(schema).encode(),
        mode,
        upcast=tuple(upcast_ops),
    )


def paths(problems: list[Any]) -> list[str]:
    return sorted(p.path for p in problems)


OBJ: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "amount": {"type": "number"}},
    "required": ["name"],
    "additionalProperties": False,
}


# --- compatibility ---------------------------------------------------------------------------


def test_the_same_schema_covers_itself() -> None:
    assert covers(OBJ, OBJ) == []


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda s: s["required"].append("amount"), "$.amount"),
        (lambda s: s["properties"]["amount"].update(type="integer"), "$.amount"),
        (lambda s: s["properties"]["name"].update(enum=["a", "b"]), "$.name"),
        (lambda s: s["properties"]["name"].update(maxLength=3), "$.name"),
        (lambda s: s["properties"]["name"].update(pattern="^a"), "$.name"),
        (lambda s: s["properties"].pop("amount"), "$.amount"),  # closed: no longer allowed
    ],
)
def test_narrowing_is_not_backward_compatible(change: Any, where: str) -> None:
    narrower = json.loads(json.dumps(OBJ))
    change(narrower)
    assert where in paths(covers(narrower, OBJ)), "the new schema refuses old instances"
    assert covers(OBJ, narrower) == [], "and old readers read new instances (forward)"


def test_integers_are_numbers_and_enums_are_checked_value_by_value() -> None:
    assert covers({"type": "number"}, {"type": "integer"}) == []
    assert covers({"type": "integer"}, {"type": "number"}) != []
    assert covers({"type": "string", "maxLength": 3}, {"enum": ["ab", "abc"]}) == []
    assert paths(covers({"type": "string", "maxLength": 2}, {"enum": ["ab", "abc"]})) == ["$"]


def test_an_open_schema_cannot_gain_a_typed_property() -> None:
    """An open object may already hold the property with any value (Confluent's open content
    model): typing it is refused."""
    old = {"type": "object"}
    new = {"type": "object", "properties": {"note": {"type": "string"}}}
    assert paths(covers(new, old)) == ["$.note"]
    closed = {**old, "additionalProperties": False}
    assert covers(new, closed) == []


def test_what_the_check_cannot_decide_is_refused_in_the_wider_schema_only() -> None:
    tricky = {"oneOf": [{"type": "string"}, {"type": "number"}]}
    problems = covers(tricky, {"type": "string"})
    assert [p.reason for p in problems] == ["cannot check compatibility of oneOf"]
    # In the narrower schema an extra assertion only narrows it further: ignoring it is sound.
    assert covers({"type": ["string", "number"]}, {"type": "string", **tricky}) == []


def test_nested_objects_and_arrays_are_followed() -> None:
    old = {
        "type": "object",
        "properties": {"lines": {"type": "array", "items": {"type": "integer"}}},
        "additionalProperties": False,
    }
    wider = json.loads(json.dumps(old))
    wider["properties"]["lines"]["items"] = {"type": "number"}
    assert covers(wider, old) == []
    assert paths(covers(old, wider)) == ["$.lines[*]"]


def test_backward_compatibility_is_judged_after_the_upcast() -> None:
    new = {
        "type": "object",
        "properties": {
            "full_name": {"type": "string"},
            "amount": {"type": "number"},
            "currency": {"type": "string", "enum": ["EUR", "USD"]},
        },
        "required": ["full_name", "currency"],
    }
    steps = ops(
        {"op": "rename", "path": "/name", "to": "full_name"},
        {"op": "add", "path": "/currency", "value": "EUR"},
    )
    assert compatibility_problems(json_version(1, OBJ), json_version(2, new, steps)) == []
    bad_default = ops(
        {"op": "rename", "path": "/name", "to": "full_name"},
        {"op": "add", "path": "/currency", "value": "GBP"},
    )
    assert paths(
        compatibility_problems(json_version(1, OBJ), json_version(2, new, bad_default))
    ) == ["$.currency"]
    without = compatibility_problems(json_version(1, OBJ), json_version(2, new))
    assert paths(without) == ["$.currency", "$.full_name"]


def test_forward_and_full_check_the_other_direction_and_none_checks_nothing() -> None:
    wider = json.loads(json.dumps(OBJ))
    wider["properties"]["amount"] = {"type": ["number", "null"]}
    assert compatibility_problems(json_version(1, OBJ), json_version(2, wider)) == []
    forward = json_version(2, wider, mode=Compatibility.FORWARD)
    assert paths(compatibility_problems(json_version(1, OBJ), forward)) == ["$.amount"]
    full = json_version(2, wider, mode=Compatibility.FULL)
    assert paths(compatibility_problems(json_version(1, OBJ), full)) == ["$.amount"]
    anything = json_version(2, {"type": "string"}, mode=Compatibility.NONE)
    assert compatibility_problems(json_version(1, OBJ), anything) == []


# --- upcasts ---------------------------------------------------------------------------------


def test_upcast_operations() -> None:
    steps = ops(
        {"op": "rename", "path": "/name", "to": "full_name"},
        {"op": "add", "path": "/currency", "value": "EUR"},
        {"op": "add", "path": "/kept", "value": 0},
        {"op": "move", "from": "/street", "path": "/address/street"},
        {"op": "remove", "path": "/legacy"},
        {"op": "remove", "path": "/absent/deeper"},
        {"op": "rename", "path": "/absent", "to": "x"},
    )
    before = {"name": "Ada", "kept": 5, "street": "Main", "legacy": True}
    after = upcast(before, steps)
    assert after == {
        "full_name": "Ada",
        "currency": "EUR",
        "kept": 5,
        "address": {"street": "Main"},
    }
    assert before == {"name": "Ada", "kept": 5, "street": "Main", "legacy": True}


def test_bad_upcasts_name_the_operation() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_upcast(
            [
                {"op": "rename", "path": "/a", "to": "b"},
                {"op": "replace", "path": "/a"},
                {"op": "add", "path": "a", "value": 1},
                {"op": "move", "from": "/a", "path": "/a/b"},
                {"op": "add", "path": "/x"},
            ],
            LIMITS,
            "upcast_json",
        )
    assert [v.field for v in caught.value.violations] == [
        "upcast_json[1]",
        "upcast_json[2]",
        "upcast_json[3]",
        "upcast_json[4]",
    ]
    with pytest.raises(InvalidArgument) as caught:
        parse_upcast([{"op": "remove", "path": "/a"}] * 3, SchemaLimits(max_upcast_operations=2))
    assert [v.field for v in caught.value.violations] == ["upcast"]


# --- registration checks and validation ------------------------------------------------------


def test_unknown_keywords_are_allowed_and_personal_fields_listed() -> None:
    schema = {
        "type": "object",
        "properties": {
            "email": {"type": "string", "x-personal": True},
            "address": {"type": "object", "properties": {"street": {"x-personal": True}}},
            "phones": {"type": "array", "items": {"type": "string", "x-personal": True}},
            "total": {"type": "number"},
        },
    }
    check_registration(json_version(1, schema), LIMITS)
    assert personal_paths(schema) == [("email",), ("address", "street"), ("phones", "*")]
    assert CompiledSchema(json_version(1, schema)).personal == personal_paths(schema)


def test_registration_checks_name_the_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_registration(json_version(1, {"type": 12}), LIMITS)
    assert caught.value.violations[0].field.startswith("document")
    with pytest.raises(InvalidArgument) as caught:
        check_registration(json_version(1, OBJ), SchemaLimits(max_document_bytes=10))
    assert [v.field for v in caught.value.violations] == ["document"]


def test_validation_reports_json_paths() -> None:
    compiled = CompiledSchema(json_version(1, OBJ))
    assert compiled.problems(b'{"name": "a", "amount": 1}') == []
    problems = compiled.problems(b'{"amount": "x", "extra": 1}')
    assert any(p.startswith("$.amount:") for p in problems)
    assert any("'name' is a required property" in p for p in problems)
    assert compiled.problems(b"{not json")[0].startswith("$: not JSON")


# --- protobuf --------------------------------------------------------------------------------


OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL


def descriptor_set(*fields: tuple[str, int, int], reserved: tuple[int, ...] = ()) -> bytes:
    message = descriptor_pb2.DescriptorProto(name="Placed")
    for name, number, kind in fields:
        message.field.add(
            name=name,
            number=number,
            type=kind,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        )
    for number in reserved:
        message.reserved_range.add(start=number, end=number + 1)
    file = descriptor_pb2.FileDescriptorProto(
        name="orders.proto", package="orders", syntax="proto3", message_type=[message]
    )
    return descriptor_pb2.FileDescriptorSet(file=[file]).SerializeToString()


STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
INT64 = descriptor_pb2.FieldDescriptorProto.TYPE_INT64


def proto_version(number: int, document: bytes) -> SchemaVersion:
    return SchemaVersion(
        "Order",
        "Placed",
        number,
        SchemaFormat.PROTOBUF,
        document,
        Compatibility.BACKWARD,
        message_name="orders.Placed",
    )


def test_protobuf_versions_evolve_by_field_numbers() -> None:
    v1 = proto_version(1, descriptor_set(("name", 1, STRING), ("amount", 2, INT64)))
    check_registration(v1, LIMITS)
    added = proto_version(
        2, descriptor_set(("name", 1, STRING), ("amount", 2, INT64), ("n", 3, STRING))
    )
    assert compatibility_problems(v1, added) == []
    retyped = proto_version(2, descriptor_set(("name", 1, INT64), ("amount", 2, INT64)))
    assert paths(compatibility_problems(v1, retyped)) == ["$.name"]
    dropped = proto_version(2, descriptor_set(("name", 1, STRING)))
    assert paths(compatibility_problems(v1, dropped)) == ["$.amount"]
    reserved = proto_version(2, descriptor_set(("name", 1, STRING), reserved=(2,)))
    assert compatibility_problems(v1, reserved) == []


def test_protobuf_payloads_must_parse() -> None:
    compiled = CompiledSchema(proto_version(1, descriptor_set(("name", 1, STRING))))
    assert compiled.problems(b"\x0a\x03Ada") == []
    assert compiled.problems(b"\x0a\xff") != []
    with pytest.raises(InvalidArgument) as caught:
        check_registration(proto_version(1, b"\xff\xff"), LIMITS)
    assert [v.field for v in caught.value.violations] == ["document"]


# --- the use case: cache, validation on append, upcast on read -------------------------------


class CountingRegistry(InMemorySchemaRegistry):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def versions(self, aggregate_type: str, event_type: str) -> list[SchemaVersion]:
        self.reads += 1
        return await super().versions(aggregate_type, event_type)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def append(*events: NewEvent) -> AppendRequest:
    return AppendRequest("order-1", "Order", ExpectedVersion.any(), events)


def event(data: Any, schema_version: int = 0, event_type: str = "Placed") -> NewEvent:
    return NewEvent(
        uuid.uuid4(), event_type, json.dumps(data).encode(), "application/json", {}, schema_version
    )


def setup(registry: SchemaRegistry) -> tuple[Schemas, Clock]:
    clock = Clock()
    catalog = SchemaCatalog(registry, refresh_s=5.0, clock=clock)
    return Schemas(registry, catalog, LIMITS, clock=lambda: T0), clock


def registration(schema: Any, upcast_ops: Any = (), version: int = 0) -> SchemaRegistration:
    return SchemaRegistration(
        "Order",
        "Placed",
        SchemaFormat.JSON_SCHEMA,
        json.dumps(schema).encode(),
        None,
        upcast=tuple(upcast_ops),
        version=version,
    )


async def test_steady_appends_read_no_schema_from_the_registry() -> None:
    registry = CountingRegistry()
    schemas, clock = setup(registry)
    await schemas.register(registration(OBJ), ADMIN)
    registry.reads = 0
    for _ in range(100):
        stamped = await schemas.catalog.stamp(append(event({"name": "a"})))
    assert stamped.events[0].metadata[SCHEMA_VERSION_KEY] == "1"
    assert registry.reads == 1, "one read fills the cache; the rest are served from it"
    for _ in range(100):
        await schemas.catalog.stamp(append(event({"x": 1}, event_type="NoSchema")))
    assert registry.reads == 2, "types without schemas are cached too"
    clock.now += 5.0
    await schemas.catalog.stamp(append(event({"name": "a"})))
    assert registry.reads == 3, "read again after refresh_s (another replica may register)"


async def test_a_version_beyond_the_cache_is_looked_up_at_once() -> None:
    registry = CountingRegistry()
    schemas, clock = setup(registry)
    await schemas.register(registration(OBJ), ADMIN)
    await schemas.catalog.stamp(append(event({"name": "a"})))
    # Registered through another replica (straight into the registry).
    wider = {**OBJ, "additionalProperties": True}
    await registry.add(json_version(2, wider))
    clock.now += 0.2
    stamped = await schemas.catalog.stamp(append(event({"name": "a", "z": 1}, schema_version=2)))
    assert stamped.events[0].metadata[SCHEMA_VERSION_KEY] == "2"


async def test_appends_are_validated_and_failures_named() -> None:
    schemas, _ = setup(InMemorySchemaRegistry())
    await schemas.register(registration(OBJ), ADMIN)
    with pytest.raises(InvalidArgument) as caught:
        await schemas.catalog.stamp(
            append(
                event({"name": "a"}),
                event({"name": 5}),
                event({"name": "a"}, schema_version=9),
                NewEvent(uuid.uuid4(), "Placed", b"\x00", "application/octet-stream"),
            )
        )
    assert [v.field for v in caught.value.violations] == [
        "events[1].data",
        "events[2].schema_version",
        "events[3].content_type",
    ]
    assert "$.name" in caught.value.violations[0].description


async def test_reads_upcast_to_the_latest_and_leave_the_rest() -> None:
    schemas, _ = setup(InMemorySchemaRegistry())
    await schemas.register(registration(OBJ), ADMIN)
    v2 = {**OBJ, "properties": {**OBJ["properties"], "full_name": {"type": "string"}}}
    v2["properties"].pop("name")
    v2["required"] = ["full_name"]
    await schemas.register(
        registration(v2, ops({"op": "rename", "path": "/name", "to": "full_name"})), ADMIN
    )

    def recorded(data: bytes, metadata: dict[str, str], event_type: str = "Placed") -> Any:
        return RecordedEvent(
            uuid.uuid4(), "o", "Order", 1, event_type, data, "application/json", metadata, T0
        )

    old = recorded(b'{"name":"Ada"}', {SCHEMA_VERSION_KEY: "1", "k": "v"})
    unstamped = recorded(b'{"name":"Bo"}', {})  # written before v1: counts as 1
    current = recorded(b'{"full_name":"Cy"}', {SCHEMA_VERSION_KEY: "2"})
    other = recorded(b'{"name":"Di"}', {}, event_type="NoSchema")
    broken = recorded(b'["not", "an", "object"]', {SCHEMA_VERSION_KEY: "1"})
    out = await schemas.catalog.latest([old, unstamped, current, other, broken])
    assert [json.loads(e.data) for e in out[:3]] == [
        {"full_name": "Ada"},
        {"full_name": "Bo"},
        {"full_name": "Cy"},
    ]
    assert out[0].metadata == {SCHEMA_VERSION_KEY: "2", "k": "v"}
    assert out[2] is current
    assert out[3] is other
    assert out[4] is broken, "an upcast that cannot apply delivers the event as stored"


async def test_registration_needs_its_grant_and_reading_needs_read() -> None:
    schemas, _ = setup(InMemorySchemaRegistry())
    reader = Principal("reader", {Operation.READ: frozenset({"Order"})})
    with pytest.raises(PermissionDenied):
        await schemas.register(registration(OBJ), reader)
    await schemas.register(registration(OBJ), ADMIN)
    assert [s.version for s in await schemas.list("Order", "", reader)] == [1]
    assert (await schemas.get("Order", "Placed", 0, reader)).registered_by == "admin"
    with pytest.raises(PermissionDenied):
        await schemas.list("Order", "", Principal("nobody"))


async def test_registration_rules() -> None:
    schemas, _ = setup(InMemorySchemaRegistry())
    with pytest.raises(InvalidArgument) as caught:
        await schemas.register(registration(OBJ, ops({"op": "remove", "path": "/a"})), ADMIN)
    assert [v.field for v in caught.value.violations] == ["upcast_json"]
    first = await schemas.register(registration(OBJ), ADMIN)
    again = await schemas.register(registration(OBJ), ADMIN)
    assert (again.already_registered, again.schema) == (True, first.schema)
    with pytest.raises(SchemaIncompatible):
        await schemas.register(registration({"type": "string"}), ADMIN)
    wider = {**OBJ, "additionalProperties": True}
    with pytest.raises(SchemaVersionConflict):
        await schemas.register(registration(wider, version=3), ADMIN)
    assert (await schemas.register(registration(wider, version=2), ADMIN)).schema.version == 2
    limited = Schemas(
        InMemorySchemaRegistry(),
        SchemaCatalog(InMemorySchemaRegistry()),
        SchemaLimits(max_versions=1),
        clock=lambda: T0,
    )
    await limited.register(registration(OBJ), ADMIN)
    with pytest.raises(InvalidArgument) as caught:
        await limited.register(registration(wider), ADMIN)
    assert [v.field for v in caught.value.violations] == ["event_type"]


async def test_personal_fields_of_a_type() -> None:
    schemas, _ = setup(InMemorySchemaRegistry())
    marked = {**OBJ, "properties": {**OBJ["properties"], "name": {"x-personal": True}}}
    await schemas.register(registration(marked), ADMIN)
    assert await schemas.catalog.personal_fields("Order", "Placed") == [("name",)]
    assert await schemas.catalog.personal_fields("Order", "Other") == []


class SlowRegistry(CountingRegistry):
    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def versions(self, aggregate_type: str, event_type: str) -> list[SchemaVersion]:
        await self.release.wait()
        return await super().versions(aggregate_type, event_type)


async def test_concurrent_misses_share_one_read_that_a_leaving_caller_does_not_cancel() -> None:
    registry = SlowRegistry()
    await registry.add(json_version(1, OBJ))
    catalog = SchemaCatalog(registry)
    waiting = [asyncio.create_task(catalog.history("Order", "Placed")) for _ in range(5)]
    await asyncio.sleep(0)
    waiting[0].cancel()
    registry.release.set()
    histories = await asyncio.gather(*waiting[1:])
    assert [h.latest for h in histories] == [1, 1, 1, 1]
    assert registry.reads == 1


def test_deep_schemas_and_data_are_refused_not_crashed_on() -> None:
    deep: dict[str, Any] = {"type": "object"}
    for _ in range(100):
        deep = {"type": "object", "properties": {"a": deep}}
    with pytest.raises(InvalidArgument) as caught:
        check_registration(json_version(1, deep), LIMITS)
    assert [v.field for v in caught.value.violations] == ["document"]
    recursive = {"type": "array", "items": {"$ref": "#"}}
    compiled = CompiledSchema(json_version(1, recursive))
    assert compiled.problems(b"[" * 900 + b"]" * 900) in ([], ["$: nested too deeply to validate"])
    assert compiled.problems(b"[" * 5000 + b"]" * 5000) == ["$: nested too deeply to validate"]


def test_upcast_paths_are_bounded() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_upcast([{"op": "add", "path": "/a" * 65, "value": 1}], LIMITS, "upcast_json")
    assert [v.field for v in caught.value.violations] == ["upcast_json[0]"]
    assert parse_upcast([{"op": "add", "path": "/a" * 64, "value": 1}], LIMITS)


class RacingRegistry(InMemorySchemaRegistry):
    """Another replica registers `rival` just before our first write lands."""

    def __init__(self, rival: SchemaVersion) -> None:
        super().__init__()
        self.rival: SchemaVersion | None = rival

    async def add(self, schema: SchemaVersion) -> bool:
        if self.rival is not None:
            rival, self.rival = self.rival, None
            await super().add(rival)
        return await super().add(schema)


async def test_a_registration_that_loses_the_race_is_judged_against_the_winner() -> None:
    wider = {**OBJ, "additionalProperties": True}
    registry = RacingRegistry(json_version(2, wider))
    await InMemorySchemaRegistry.add(registry, json_version(1, OBJ))
    schemas, _ = setup(registry)
    registered = await schemas.register(registration(wider), ADMIN)
    # Same content as the winner's: answered with it.
    assert (registered.schema.version, registered.already_registered) == (2, True)

    either = {**OBJ, "properties": {**OBJ["properties"], "amount": {"type": ["number", "string"]}}}
    registry = RacingRegistry(json_version(2, either))
    await InMemorySchemaRegistry.add(registry, json_version(1, OBJ))
    schemas, _ = setup(registry)
    with pytest.raises(SchemaIncompatible):  # fine against v1, not against the winning v2
        await schemas.register(registration({**OBJ, "title": "v2"}), ADMIN)
    assert [v.version for v in await registry.versions("Order", "Placed")] == [1, 2]

    registry = RacingRegistry(json_version(2, wider))
    await InMemorySchemaRegistry.add(registry, json_version(1, OBJ))
    schemas, _ = setup(registry)
    with pytest.raises(SchemaVersionConflict):  # it asked for version 2 exactly
        await schemas.register(registration({**wider, "title": "x"}, version=2), ADMIN)
