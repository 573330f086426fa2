"""Versioned event schemas: what a version is, the compatibility rules checked when one is
registered, payload validation, and the declarative upcasts from version n to n+1.

Pure rules, no I/O: the registry port (ports.SchemaRegistry) stores versions, the use case
(usecases/schemas.py) caches them and applies these functions.

JSON Schema compatibility is checked on a documented subset (see `covers`): whatever the check
does not understand in a schema that must accept the other's instances is refused with the
keyword named, never assumed compatible.
"""

from __future__ import annotations

import copy
import enum
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jsonschema
import jsonschema.exceptions
import jsonschema.protocols
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from eventstore.domain.errors import EventStoreError, FieldViolation, InvalidArgument

#: Keyword marking a property as personal data (for crypto-shredding): see `personal_paths`.
PERSONAL_KEYWORD = "x-personal"


class SchemaFormat(enum.Enum):
    JSON_SCHEMA = "json_schema"
    PROTOBUF = "protobuf"


class Compatibility(enum.Enum):
    """Checked against the previous version only (not transitively) when one is registered."""

    #: readers of the new version can read data written with the previous one (after upcast)
    BACKWARD = "backward"
    #: readers of the previous version can read data written with the new one
    FORWARD = "forward"
    FULL = "full"
    NONE = "none"


class UpcastKind(enum.Enum):
    #: the value at `path` gets the key `to` in the same object
    RENAME = "rename"
    #: `value` at `path` when nothing is there (missing objects on the way are created)
    ADD = "add"
    #: the value at `from_path` goes to `path`
    MOVE = "move"
    #: the value at `path` goes away
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class UpcastOp:
    """One step of an upcast. Paths are JSON Pointers (RFC 6901) into objects (no arrays): an
    operation whose source is absent does nothing, so a field that was optional stays so."""

    kind: UpcastKind
    path: tuple[str, ...]
    from_path: tuple[str, ...] = ()
    to: str = ""
    #: ADD's default, as JSON text (kept as text so the dataclass stays hashable and immutable)
    value_json: str = "null"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.kind.value, "path": pointer(self.path)}
        if self.kind is UpcastKind.MOVE:
            out["from"] = pointer(self.from_path)
        if self.kind is UpcastKind.RENAME:
            out["to"] = self.to
        if self.kind is UpcastKind.ADD:
            out["value"] = json.loads(self.value_json)
        return out


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """One registered version of an event type's schema: immutable once registered."""

    aggregate_type: str
    event_type: str
    version: int
    format: SchemaFormat
    #: the JSON Schema (UTF-8 JSON), or a serialized google.protobuf.FileDescriptorSet
    document: bytes
    compatibility: Compatibility
    #: protobuf only: the fully qualified message name in `document`
    message_name: str = ""
    #: how an event of the previous version becomes one of this version (none for version 1)
    upcast: tuple[UpcastOp, ...] = ()
    registered_at: datetime | None = None
    registered_by: str = ""


@dataclass(frozen=True, slots=True)
class SchemaRegistration:
    """A validated RegisterSchema request."""

    aggregate_type: str
    event_type: str
    format: SchemaFormat
    document: bytes
    #: None: the previous version's (backward for a first version)
    compatibility: Compatibility | None
    message_name: str = ""
    upcast: tuple[UpcastOp, ...] = ()
    #: the version it must become (0: the next)
    version: int = 0


@dataclass(frozen=True, slots=True)
class SchemaLimits:
    max_document_bytes: int = 64 * 1024
    max_versions: int = 100
    max_upcast_operations: int = 32
    #: an ADD's default value, as JSON text
    max_upcast_value_bytes: int = 4096


class SchemaIncompatible(EventStoreError):
    """A new version breaks the compatibility its type asks for (or uses what the check cannot
    decide). `problems` are (JSON path into the schema, why) pairs."""

    def __init__(
        self, aggregate_type: str, event_type: str, mode: Compatibility, problems: list[Problem]
    ) -> None:
        self.aggregate_type = aggregate_type
        self.event_type = event_type
        self.mode = mode
        self.problems = problems
        listed = "; ".join(f"{p.path}: {p.reason}" for p in problems[:10])
        super().__init__(
            f"the new schema of {aggregate_type}/{event_type} is not {mode.value} compatible "
            f"with the latest version: {listed}"
        )


class SchemaVersionConflict(EventStoreError):
    """The registration named a version other than the next one (another registration won)."""

    def __init__(self, aggregate_type: str, event_type: str, expected: int, actual: int) -> None:
        self.aggregate_type = aggregate_type
        self.event_type = event_type
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{aggregate_type}/{event_type} has schema versions up to {actual}; the "
            f"registration was for version {expected}"
        )


class SchemaNotFound(EventStoreError):
    def __init__(self, aggregate_type: str, event_type: str, version: int | None) -> None:
        self.aggregate_type = aggregate_type
        self.event_type = event_type
        which = f"version {version}" if version else "schema"
        super().__init__(f"{aggregate_type}/{event_type} has no {which}")


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    reason: str


# --- parsing what a client registers ---------------------------------------------------------


def pointer(path: Sequence[str]) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in path)


def parse_pointer(text: str) -> tuple[str, ...]:
    """RFC 6901: "" is the root, "/a/b" the key b of the key a; ~1 is '/', ~0 is '~'."""
    if text == "":
        return ()
    if not text.startswith("/"):
        raise ValueError("must be a JSON Pointer such as /customer/name")
    return tuple(p.replace("~1", "/").replace("~0", "~") for p in text[1:].split("/"))


def parse_upcast(
    document: Any, limits: SchemaLimits, where: str = "upcast"
) -> tuple[UpcastOp, ...]:
    """Upcast operations from their JSON form: a list of {"op": ..., "path": ...} objects."""
    if not isinstance(document, list):
        raise InvalidArgument.of(where, "must be a JSON list of operations")
    if len(document) > limits.max_upcast_operations:
        raise InvalidArgument.of(
            where, f"holds {len(document)} operations; at most {limits.max_upcast_operations}"
        )
    ops: list[UpcastOp] = []
    violations: list[FieldViolation] = []
    for index, entry in enumerate(document):
        at = f"{where}[{index}]"
        try:
            ops.append(_parse_op(entry, limits))
        except ValueError as exc:
            violations.append(FieldViolation(at, str(exc)))
    if violations:
        raise InvalidArgument(violations)
    return tuple(ops)


def _parse_op(entry: Any, limits: SchemaLimits) -> UpcastOp:
    if not isinstance(entry, Mapping):
        raise ValueError("must be an object with op and path")
    try:
        kind = UpcastKind(entry.get("op"))
    except ValueError:
        raise ValueError(f"op must be one of {[k.value for k in UpcastKind]}") from None
    allowed = {"op", "path"} | {
        UpcastKind.RENAME: {"to"},
        UpcastKind.ADD: {"value"},
        UpcastKind.MOVE: {"from"},
        UpcastKind.REMOVE: set[str](),
    }[kind]
    if set(entry) - allowed:
        raise ValueError(f"unknown keys {sorted(set(entry) - allowed)} for {kind.value}")
    raw_path = entry.get("path")
    if not isinstance(raw_path, str):
        raise ValueError("path must be a JSON Pointer string")
    path = parse_pointer(raw_path)
    if not path:
        raise ValueError("path must name a key, not the whole document")
    if len(path) > MAX_SCHEMA_DEPTH or str(entry.get("from", "")).count("/") > MAX_SCHEMA_DEPTH:
        raise ValueError(f"paths have at most {MAX_SCHEMA_DEPTH} keys")
    if kind is UpcastKind.RENAME:
        to = entry.get("to")
        if not isinstance(to, str) or not to:
            raise ValueError("to must be the new key name")
        return UpcastOp(kind, path, to=to)
    if kind is UpcastKind.MOVE:
        source = entry.get("from")
        if not isinstance(source, str):
            raise ValueError("from must be a JSON Pointer string")
        from_path = parse_pointer(source)
        if not from_path:
            raise ValueError("from must name a key, not the whole document")
        if path[: len(from_path)] == from_path:
            raise ValueError("cannot move a value into itself")
        return UpcastOp(kind, path, from_path=from_path)
    if kind is UpcastKind.ADD:
        if "value" not in entry:
            raise ValueError("add needs a value (the default)")
        text = json.dumps(entry["value"], separators=(",", ":"), ensure_ascii=False)
        if len(text.encode()) > limits.max_upcast_value_bytes:
            raise ValueError(f"value is over {limits.max_upcast_value_bytes} bytes of JSON")
        return UpcastOp(kind, path, value_json=text)
    return UpcastOp(kind, path)


def parse_json_schema(document: bytes, where: str = "document") -> Any:
    """The schema as JSON, checked against its metaschema (Draft 2020-12 unless `$schema` says
    otherwise). Unknown keywords are allowed (annotations such as x-personal)."""
    try:
        schema = json.loads(document)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument.of(where, f"is not JSON: {exc}") from None
    except RecursionError:
        schema = None
    if schema is None or _depth(schema) > MAX_SCHEMA_DEPTH:
        raise InvalidArgument.of(where, f"is nested deeper than {MAX_SCHEMA_DEPTH} levels")
    if not isinstance(schema, dict | bool):
        raise InvalidArgument.of(where, "a JSON Schema is an object (or true/false)")
    try:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        cls.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        raise InvalidArgument.of(
            f"{where}{_json_path(exc.absolute_path)}", f"not a valid JSON Schema: {exc.message}"
        ) from None
    except (jsonschema.exceptions.ReferenceResolutionError, RecursionError) as exc:
        raise InvalidArgument.of(where, f"not a usable JSON Schema: {exc}") from None
    return schema


#: Nesting of a schema document (objects and lists): the checks here recurse through it.
MAX_SCHEMA_DEPTH = 64


def _depth(value: Any) -> int:
    """How deeply `value` nests lists and objects (iteratively: it may be deep)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, level)
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, level + 1) for child in children)
    return deepest


def _json_path(parts: Sequence[Any]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


# --- validation of payloads ------------------------------------------------------------------


class CompiledSchema:
    """A version ready to validate payloads (compiled once, cached by the use case)."""

    def __init__(self, version: SchemaVersion) -> None:
        self.version = version
        self._validator: jsonschema.protocols.Validator | None = None
        self._message: Any = None
        #: the paths the schema marks as personal data (`personal_paths`)
        self.personal: list[tuple[str, ...]] = []
        if version.format is SchemaFormat.JSON_SCHEMA:
            schema = json.loads(version.document)
            self.personal = personal_paths(schema)
            cls = jsonschema.validators.validator_for(
                schema, default=jsonschema.Draft202012Validator
            )
            self._validator = cls(schema)
        else:
            self._message = protobuf_message_class(version.document, version.message_name)

    def problems(self, data: bytes, max_problems: int = 5) -> list[str]:
        """Why `data` is not an instance of this version ([] when it is)."""
        if self._validator is not None:
            try:
                instance = json.loads(data)
            except (UnicodeDecodeError, ValueError) as exc:
                return [f"$: not JSON ({exc})"]
            except RecursionError:
                return ["$: nested too deeply to validate"]
            # The common case first: is_valid stops at the first error and builds none.
            try:
                if self._validator.is_valid(instance):
                    return []
                errors = sorted(self._validator.iter_errors(instance), key=lambda e: e.json_path)
            except RecursionError:
                # A recursive schema ($ref to itself) over data nested almost 1,000 levels.
                return ["$: nested too deeply to validate"]
            found: list[str] = []
            for error in errors[:max_problems]:
                found.append(f"{error.json_path}: {error.message}")
            return found
        try:
            self._message.FromString(data)
        except DecodeError as exc:
            return [f"$: does not parse as {self.version.message_name} ({exc})"]
        return []


def protobuf_message_class(document: bytes, message_name: str) -> Any:
    """The message class of `message_name` in a serialized FileDescriptorSet (ValueError if
    the set does not build or lacks the message)."""
    files = descriptor_pb2.FileDescriptorSet()
    try:
        files.ParseFromString(document)
    except DecodeError as exc:
        raise ValueError(f"not a serialized FileDescriptorSet ({exc})") from None
    pool = descriptor_pool.DescriptorPool()
    try:
        for proto in files.file:
            pool.Add(proto)
        descriptor = pool.FindMessageTypeByName(message_name)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"no message {message_name!r} builds from the set ({exc})") from None
    return message_factory.GetMessageClass(descriptor)


def check_registration(candidate: SchemaVersion, limits: SchemaLimits) -> None:
    """A new version's own checks (before compatibility): size, parse, upcast form."""
    if len(candidate.document) > limits.max_document_bytes:
        raise InvalidArgument.of(
            "document",
            f"is {len(candidate.document)} bytes; the limit is {limits.max_document_bytes}",
        )
    if candidate.format is SchemaFormat.JSON_SCHEMA:
        if candidate.message_name:
            raise InvalidArgument.of("message_name", "only for protobuf schemas")
        parse_json_schema(candidate.document)
        return
    if candidate.upcast:
        raise InvalidArgument.of(
            "upcast", "upcasts are JSON operations: protobuf versions evolve by field numbers"
        )
    if not candidate.message_name:
        raise InvalidArgument.of("message_name", "a protobuf schema names its message")
    try:
        protobuf_message_class(candidate.document, candidate.message_name)
    except ValueError as exc:
        raise InvalidArgument.of("document", str(exc)) from None


# --- upcasting -------------------------------------------------------------------------------


class UpcastFailed(Exception):
    """The payload does not have the shape an operation needs (e.g. a path through a string)."""


def upcast(instance: Any, ops: Sequence[UpcastOp]) -> Any:
    """`instance` after `ops`, in order (a copy; the argument is left as it was)."""
    result = copy.deepcopy(instance)
    for op in ops:
        result = _apply(result, op)
    return result


def _parent(root: Any, path: tuple[str, ...], create: bool) -> dict[str, Any] | None:
    node = root
    for key in path[:-1]:
        if not isinstance(node, dict):
            raise UpcastFailed(f"{pointer(path)}: passes through a non-object")
        if key not in node:
            if not create:
                return None
            node[key] = {}
        node = node[key]
    if not isinstance(node, dict):
        raise UpcastFailed(f"{pointer(path)}: the parent is not an object")
    return node


def _apply(root: Any, op: UpcastOp) -> Any:
    if not isinstance(root, dict):
        raise UpcastFailed("the payload is not a JSON object")
    if op.kind is UpcastKind.ADD:
        parent = _parent(root, op.path, create=True)
        assert parent is not None
        parent.setdefault(op.path[-1], json.loads(op.value_json))
    elif op.kind is UpcastKind.REMOVE:
        parent = _parent(root, op.path, create=False)
        if parent is not None:
            parent.pop(op.path[-1], None)
    elif op.kind is UpcastKind.RENAME:
        parent = _parent(root, op.path, create=False)
        if parent is not None and op.path[-1] in parent:
            parent[op.to] = parent.pop(op.path[-1])
    else:
        source = _parent(root, op.from_path, create=False)
        if source is not None and op.from_path[-1] in source:
            value = source.pop(op.from_path[-1])
            target = _parent(root, op.path, create=True)
            assert target is not None
            target[op.path[-1]] = value
    return root


# --- compatibility ---------------------------------------------------------------------------

_ALL_TYPES = frozenset({"null", "boolean", "object", "array", "number", "string", "integer"})
#: Assertion keywords the check understands (anything else asserting, in a schema that must
#: accept the other's instances, is refused: it cannot be decided cheaply, e.g. oneOf or $ref).
_HANDLED = frozenset(
    {
        "type",
        "enum",
        "const",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "pattern",
        "multipleOf",
        "uniqueItems",
    }
)
#: Every assertion keyword of JSON Schema 2020-12 (and draft 7's spellings). Other keywords
#: are annotations (title, default, format without a format checker, x-personal...).
_ASSERTIONS = _HANDLED | frozenset(
    {
        "maxContains",
        "minContains",
        "dependentRequired",
        "dependentSchemas",
        "dependencies",
        "patternProperties",
        "prefixItems",
        "additionalItems",
        "contains",
        "propertyNames",
        "unevaluatedItems",
        "unevaluatedProperties",
        "allOf",
        "anyOf",
        "oneOf",
        "not",
        "if",
        "then",
        "else",
        "$ref",
        "$dynamicRef",
        "$recursiveRef",
    }
)
_LOWER = ("minimum", "minLength", "minItems", "minProperties")
_UPPER = ("maximum", "maxLength", "maxItems", "maxProperties")


def _types(schema: Mapping[str, Any]) -> frozenset[str]:
    declared = schema.get("type")
    if declared is None:
        return _ALL_TYPES
    types = frozenset([declared] if isinstance(declared, str) else declared)
    # "number" admits integers too.
    return types | {"integer"} if "number" in types else types


def _valid(schema: Any, instance: Any) -> bool:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return bool(cls(schema).is_valid(instance))


def covers(sup: Any, sub: Any, path: str = "$") -> list[Problem]:
    """Whether every instance valid under `sub` is valid under `sup` (soundly: a problem is
    reported where that is not certain). Rules, in Confluent Schema Registry's spirit:

    * `sub` with enum/const: each of its values must validate against `sup` (exact);
    * types: each type `sub` admits must be one `sup` admits ("integer" is a "number");
    * objects: `sup`'s required ⊆ `sub`'s required; each property `sup` describes must be
      covered by what `sub` says of it (its property schema, else its additionalProperties);
      each property only `sub` describes must be covered by `sup`'s additionalProperties; a
      closed `sup` (additionalProperties other than true) needs `sub`'s to be covered too;
    * arrays: `items` covered; numeric, length and count bounds at least as tight in `sub`;
      pattern, multipleOf and uniqueItems identical in `sub`;
    * any other assertion in `sup` (allOf/anyOf/oneOf/not/if, $ref, patternProperties,
      prefixItems, dependent*...) is refused: the check cannot decide it. In `sub` they are
      ignored, which only admits more instances than `sub` really does: sound.
    Annotations (title, description, default, format, x-...) never matter.
    """
    if sup is True or sub is False:
        return []
    if sup is False:
        return [Problem(path, "the new schema accepts nothing here")]
    if sub is True:
        sub = {}
    if list(sub) == ["anyOf"]:
        # A union (upcast_schema makes one of a defaulted field): each alternative must fit.
        return [p for option in sub["anyOf"] for p in covers(sup, option, path)]
    if "enum" in sub or "const" in sub:
        values = [sub["const"]] if "const" in sub else list(sub["enum"])
        bad = [v for v in values if not _valid(sup, v)]
        return [Problem(path, f"value {v!r} is no longer accepted") for v in bad[:5]]
    unchecked = sorted((set(sup) & _ASSERTIONS) - _HANDLED)
    if unchecked:
        return [Problem(path, f"cannot check compatibility of {', '.join(unchecked)}")]
    problems: list[Problem] = []
    if "enum" in sup or "const" in sup:
        return [Problem(path, "a value set (enum/const) now restricts what was open")]
    sub_types, sup_types = _types(sub), _types(sup)
    lost = sorted(sub_types - sup_types)
    if lost:
        problems.append(Problem(path, f"type(s) {', '.join(lost)} no longer accepted"))
    problems.extend(_bounds(sup, sub, path))
    if "object" in sub_types and "object" in sup_types:
        problems.extend(_objects(sup, sub, path))
    if "array" in sub_types and "array" in sup_types and "items" in sup:
        if "prefixItems" in sub:
            problems.append(Problem(path, "cannot check compatibility of prefixItems"))
        else:
            problems.extend(covers(sup["items"], sub.get("items", True), f"{path}[*]"))
    return problems


def _bounds(sup: Mapping[str, Any], sub: Mapping[str, Any], path: str) -> list[Problem]:
    problems: list[Problem] = []
    for key in _LOWER:
        if key in sup and not (key in sub and sub[key] >= sup[key]):
            problems.append(Problem(path, f"{key} {sup[key]} is tighter than before"))
    for key in _UPPER:
        if key in sup and not (key in sub and sub[key] <= sup[key]):
            problems.append(Problem(path, f"{key} {sup[key]} is tighter than before"))
    for key in ("exclusiveMinimum", "exclusiveMaximum", "pattern", "multipleOf"):
        if key in sup and sub.get(key) != sup[key]:
            problems.append(Problem(path, f"{key} {sup[key]!r} is new or changed"))
    if sup.get("uniqueItems") and not sub.get("uniqueItems"):
        problems.append(Problem(path, "uniqueItems is new"))
    return problems


def _objects(sup: Mapping[str, Any], sub: Mapping[str, Any], path: str) -> list[Problem]:
    problems: list[Problem] = []
    if "patternProperties" in sub:
        return [Problem(path, "cannot check compatibility of patternProperties")]
    missing = sorted(set(sup.get("required", [])) - set(sub.get("required", [])))
    for name in missing:
        problems.append(Problem(f"{path}.{name}", "is required now and was not before"))
    sup_props: Mapping[str, Any] = sup.get("properties", {})
    sub_props: Mapping[str, Any] = sub.get("properties", {})
    sub_extra = sub.get("additionalProperties", True)
    sup_extra = sup.get("additionalProperties", True)
    for name, schema in sup_props.items():
        problems.extend(covers(schema, sub_props.get(name, sub_extra), f"{path}.{name}"))
    for name, schema in sub_props.items():
        if name not in sup_props:
            problems.extend(covers(sup_extra, schema, f"{path}.{name}"))
    if sup_extra is not True:
        problems.extend(covers(sup_extra, sub_extra, f"{path}.*"))
    return problems


def upcast_schema(schema: Any, ops: Sequence[UpcastOp]) -> tuple[Any, list[Problem]]:
    """What the previous version's instances look like after `ops`, as a schema (so that
    BACKWARD compatibility is judged on what readers of the new version actually get). Only
    paths through plain object schemas (properties) can be followed; others are problems."""
    result = copy.deepcopy(schema)
    problems: list[Problem] = []
    for index, op in enumerate(ops):
        try:
            result = _upcast_schema_op(result, op)
        except UpcastFailed as exc:
            problems.append(Problem(f"upcast[{index}]", str(exc)))
    return result, problems


def _object_schema(schema: Any, path: tuple[str, ...], create: bool) -> dict[str, Any] | None:
    """The schema of the object holding path[-1] (None: it does not exist)."""
    node = schema
    for key in path[:-1]:
        if not isinstance(node, dict) or (set(node) & _ASSERTIONS) - _HANDLED:
            raise UpcastFailed(f"{pointer(path)}: the schema cannot be followed there")
        props = node.setdefault("properties", {}) if create else node.get("properties", {})
        if key not in props:
            if not create:
                return None
            props[key] = {"type": "object"}
            node.setdefault("required", [])
            if key not in node["required"]:
                node["required"].append(key)
        node = props[key]
    if node is True:
        return None
    if not isinstance(node, dict) or (set(node) & _ASSERTIONS) - _HANDLED:
        raise UpcastFailed(f"{pointer(path)}: the schema cannot be followed there")
    return node


def _take(node: dict[str, Any], key: str) -> tuple[Any, bool] | None:
    props = node.get("properties", {})
    if key not in props:
        # Undescribed: whatever additionalProperties says (true: anything), never required.
        extra = node.get("additionalProperties", True)
        return (extra, False) if extra is not False else None
    required = key in node.get("required", [])
    schema = props.pop(key)
    if required:
        node["required"] = [r for r in node["required"] if r != key]
    return schema, required


def _put(node: dict[str, Any], key: str, schema: Any, required: bool) -> None:
    node.setdefault("properties", {})[key] = schema
    if required and key not in node.setdefault("required", []):
        node["required"].append(key)


def _upcast_schema_op(schema: Any, op: UpcastOp) -> Any:
    if op.kind is UpcastKind.ADD:
        node = _object_schema(schema, op.path, create=True)
        assert node is not None
        value = json.loads(op.value_json)
        old = node.get("properties", {}).get(op.path[-1])
        # Present already: as it was, or absent before and now the default.
        present = old if old is not None else node.get("additionalProperties", True)
        new: Any = {"const": value} if present is False else {"anyOf": [present, {"const": value}]}
        if op.path[-1] in node.get("required", []):
            new = present
        _put(node, op.path[-1], new, required=True)
    elif op.kind is UpcastKind.REMOVE:
        node = _object_schema(schema, op.path, create=False)
        if node is not None:
            node.get("properties", {}).pop(op.path[-1], None)
            if op.path[-1] in node.get("required", []):
                node["required"] = [r for r in node["required"] if r != op.path[-1]]
    elif op.kind is UpcastKind.RENAME:
        node = _object_schema(schema, op.path, create=False)
        if node is not None and (taken := _take(node, op.path[-1])) is not None:
            _put(node, op.to, *taken)
    else:
        node = _object_schema(schema, op.from_path, create=False)
        if node is not None and (taken := _take(node, op.from_path[-1])) is not None:
            target = _object_schema(schema, op.path, create=True)
            assert target is not None
            _put(target, op.path[-1], *taken)
    return schema


def compatibility_problems(previous: SchemaVersion, candidate: SchemaVersion) -> list[Problem]:
    """What breaks the candidate's compatibility mode against the previous version."""
    mode = candidate.compatibility
    if mode is Compatibility.NONE:
        return []
    if previous.format is not candidate.format:
        return [Problem("$", f"the format changes from {previous.format.value}")]
    if candidate.format is SchemaFormat.PROTOBUF:
        return protobuf_problems(previous, candidate)
    old = json.loads(previous.document)
    new = json.loads(candidate.document)
    problems: list[Problem] = []
    if mode in (Compatibility.BACKWARD, Compatibility.FULL):
        # Readers of the new version get old events upcast: judge what they really get.
        upcast_old, failed = upcast_schema(old, candidate.upcast)
        problems.extend(failed)
        problems.extend(covers(new, upcast_old, "$"))
    if mode in (Compatibility.FORWARD, Compatibility.FULL):
        # Old readers get new events as stored (no downcasts).
        problems.extend(covers(old, new, "$"))
    return problems


# --- protobuf compatibility (by field numbers) -----------------------------------------------


def protobuf_problems(previous: SchemaVersion, candidate: SchemaVersion) -> list[Problem]:
    """Protobuf evolves by field numbers: a number in both versions keeps its type and
    cardinality; a removed number must be reserved (so it is never reused with another
    meaning); required fields (proto2) are neither added nor removed. Checked for the named
    message and, recursively, the message types of its fields that keep their name."""
    old = protobuf_message_class(previous.document, previous.message_name).DESCRIPTOR
    new = protobuf_message_class(candidate.document, candidate.message_name).DESCRIPTOR
    return list(_proto_fields(old, new, "$", set()))


def _proto_fields(old: Any, new: Any, path: str, seen: set[str]) -> Iterator[Problem]:
    if old.full_name in seen:
        return
    seen.add(old.full_name)
    old_fields = {f.number: f for f in old.fields}
    new_fields = {f.number: f for f in new.fields}
    reserved = [range(start, end) for start, end in _reserved_ranges(new)]
    for number, was in old_fields.items():
        now = new_fields.get(number)
        where = f"{path}.{was.name}"
        if now is None:
            if not any(number in r for r in reserved):
                yield Problem(where, f"field {number} is removed without being reserved")
            if _required(was):
                yield Problem(where, f"required field {number} is removed")
            continue
        if now.type != was.type or _repeated(now) != _repeated(was):
            yield Problem(where, f"field {number} changes its type or cardinality")
        elif was.message_type is not None and now.message_type is not None:
            if was.message_type.full_name != now.message_type.full_name:
                yield Problem(where, f"field {number} changes its message type")
            else:
                yield from _proto_fields(was.message_type, now.message_type, where, seen)
        elif (
            was.enum_type is not None
            and now.enum_type is not None
            and was.enum_type.full_name != now.enum_type.full_name
        ):
            yield Problem(where, f"field {number} changes its enum type")
    for number, now in new_fields.items():
        if number not in old_fields and _required(now):
            yield Problem(f"{path}.{now.name}", f"new field {number} is required")


def _reserved_ranges(descriptor: Any) -> list[tuple[int, int]]:
    proto = descriptor_pb2.DescriptorProto()
    descriptor.CopyToProto(proto)
    return [(r.start, r.end) for r in proto.reserved_range]


def _repeated(field_descriptor: Any) -> bool:
    return bool(field_descriptor.is_repeated)


def _required(field_descriptor: Any) -> bool:
    return bool(field_descriptor.is_required)


# --- personal data annotations ---------------------------------------------------------------


def personal_paths(schema: Any) -> list[tuple[str, ...]]:
    """Paths (object keys; "*" for array items) the schema marks with `"x-personal": true`, for
    the erasure feature's per-subject encryption. Only `properties` and `items` are followed."""
    found: list[tuple[str, ...]] = []

    def walk(node: Any, at: tuple[str, ...]) -> None:
        if not isinstance(node, dict):
            return
        if node.get(PERSONAL_KEYWORD) is True and at:
            found.append(at)
            return
        for key, child in node.get("properties", {}).items():
            walk(child, (*at, key))
        if isinstance(node.get("items"), dict):
            walk(node["items"], (*at, "*"))

    walk(schema, ())
    return found


@dataclass(frozen=True, slots=True)
class SchemaHistory:
    """Every version of one event type, ascending (empty: the type has no schema)."""

    versions: tuple[SchemaVersion, ...] = ()
    compiled: Mapping[int, CompiledSchema] = field(default_factory=dict)

    @property
    def latest(self) -> int:
        return self.versions[-1].version if self.versions else 0

    def ops_between(self, stored: int, target: int) -> list[UpcastOp]:
        ops: list[UpcastOp] = []
        for version in self.versions:
            if stored < version.version <= target:
                ops.extend(version.upcast)
        return ops
