"""Requests from HTTP (path variables, query parameters, a JSON body) and responses to JSON, by
the proto3 JSON mapping (google.protobuf.json_format): lowerCamelCase names emitted, both those
and the proto's names accepted, bytes as base64, 64-bit integers as strings, timestamps in
RFC 3339. Query parameters set fields as grpc-gateway's do: `name=value`, a repeated field by
repeating the parameter, a nested field by a dotted path. A google.protobuf.Empty field (a
choice such as `from_end`) is set by naming it (`?from_end` or `?from_end=true`).

Bad input is refused as the server refuses it: `BadInput` names the field (proto names, dotted,
as the gRPC errors' field violations do), never a generic error.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from eventstore.rest.routes import Route

_EMPTY = "google.protobuf.Empty"
#: Message types whose JSON form is a string (so a query parameter can set them).
_STRING_MESSAGES = {
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
}
_TRUE, _FALSE = ("true", "1", ""), ("false", "0")
_BASE64 = re.compile(r"^[A-Za-z0-9+/_-]*={0,2}$")
_PARSE_CHAIN = re.compile(r"Failed to parse (\w+) field")


class BadInput(Exception):
    """The HTTP request does not make a valid request message; `field` names where."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}" if field else description)
        self.field = field
        self.description = description


def request_from(
    route: Route,
    path: Mapping[str, str],
    query: Iterable[tuple[str, str]],
    body: bytes | None,
) -> Message:
    """The gRPC request message of `route` for this HTTP request."""
    descriptor = route.rpc.input_type
    fields: dict[str, Any] = {}
    query = list(query)
    if route.body == "*":
        fields = _json_object(body)
        if query:
            raise BadInput(query[0][0], "not a field here: the JSON body is the request")
    else:
        for name, value in query:
            _set_from_query(fields, descriptor, name, value)
    for name, value in path.items():
        field = descriptor.fields_by_name[name]
        for given in (field.name, field.json_name):
            if given in fields and str(fields[given]) != value:
                raise BadInput(name, f"{fields[given]!r} in the body, {value!r} in the path")
            fields.pop(given, None)
        fields[name] = value
    _check(fields, descriptor, "")
    message: Message = _message_class(route)()
    try:
        json_format.ParseDict(fields, message)
    except json_format.ParseError as exc:
        raise BadInput(_field_of(exc, fields, descriptor), _reason_of(exc)) from None
    return message


def to_json(message: Message) -> dict[str, Any]:
    """The proto3 JSON form, every field shown (a client sees `alreadyCommitted: false`)."""
    result: dict[str, Any] = json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True
    )
    return result


def _message_class(route: Route) -> type[Message]:
    # The generated class (eventstore.v1.eventstore_pb2), registered when it was imported.
    return message_factory.GetMessageClass(route.rpc.input_type)


def _json_object(body: bytes | None) -> dict[str, Any]:
    if not body:
        return {}
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput("", f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadInput("", "the body is nested too deeply") from None
    if not isinstance(value, dict):
        raise BadInput("", "the body must be a JSON object")
    return value


def _field(descriptor: Descriptor, name: str) -> FieldDescriptor | None:
    field = descriptor.fields_by_name.get(name)
    if field is not None:
        return field
    for candidate in descriptor.fields:
        if candidate.json_name == name:
            return candidate
    return None


def _set_from_query(fields: dict[str, Any], descriptor: Descriptor, name: str, raw: str) -> None:
    parts = name.split(".")
    target = fields
    path: list[str] = []
    for depth, part in enumerate(parts):
        field = _field(descriptor, part)
        if field is None:
            raise BadInput(".".join([*path, part]), "no such field")
        path.append(field.name)
        last = depth == len(parts) - 1
        message = field.message_type
        if not last:
            if message is None or field.is_repeated or message.full_name in _STRING_MESSAGES:
                raise BadInput(".".join(path), "not a message field: nothing to set inside it")
            target = target.setdefault(field.name, {})
            descriptor = message
            continue
        value = _query_value(field, raw, ".".join(path))
        if value is None:
            return
        if field.is_repeated:
            target.setdefault(field.name, []).append(value)
        elif field.name in target:
            raise BadInput(".".join(path), "given more than once")
        else:
            target[field.name] = value


def _query_value(field: FieldDescriptor, raw: str, path: str) -> Any:
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        raise BadInput(path, "a map cannot be set from a query parameter")
    if message is not None and message.full_name == _EMPTY:
        if raw.lower() in _TRUE:
            return {}
        if raw.lower() in _FALSE:
            return None
        raise BadInput(path, f"{raw!r}: name it (or =true) to choose it")
    if message is not None and message.full_name not in _STRING_MESSAGES:
        raise BadInput(path, "a message cannot be set from one query parameter")
    if field.type == FieldDescriptor.TYPE_BOOL:
        if raw.lower() in _TRUE[:2]:
            return True
        if raw.lower() in _FALSE:
            return False
        raise BadInput(path, f"{raw!r} is not a boolean (true or false)")
    # Numbers, enums, strings, bytes, timestamps: their JSON string forms parse as they are.
    return raw


def _check(fields: Mapping[str, Any], descriptor: Descriptor, prefix: str) -> None:
    """What json_format accepts silently or names vaguely: an unknown field (named here with
    its path) and bytes that are not base64 (json_format drops the invalid characters)."""
    for name, value in fields.items():
        field = _field(descriptor, name)
        path = f"{prefix}{field.name if field is not None else name}"
        if field is None:
            raise BadInput(path, "no such field")
        message = field.message_type
        if message is not None and message.GetOptions().map_entry:
            value_field = message.fields_by_name["value"]
            if isinstance(value, dict) and value_field.message_type is not None:
                for key, item in value.items():
                    if isinstance(item, dict):
                        _check(item, value_field.message_type, f"{path}[{key}].")
            continue
        items = value if field.is_repeated and isinstance(value, list) else [value]
        for index, item in enumerate(items):
            where = f"{path}[{index}]" if field.is_repeated else path
            if message is not None and isinstance(item, dict) and message.full_name != _EMPTY:
                if message.full_name.startswith("google.protobuf."):
                    continue  # well-known types: json_format knows their forms
                _check(item, message, f"{where}.")
            elif field.type == FieldDescriptor.TYPE_BYTES and isinstance(item, str):
                _check_base64(item, where)


def _check_base64(value: str, path: str) -> None:
    if not _BASE64.match(value):
        raise BadInput(path, "not base64 (bytes are base64 in JSON)")
    try:
        base64.urlsafe_b64decode(
            value.replace("+", "-").replace("/", "_") + "=" * (-len(value) % 4)
        )
    except (binascii.Error, ValueError):
        raise BadInput(path, "not base64 (bytes are base64 in JSON)") from None


def _field_of(exc: json_format.ParseError, fields: Any, descriptor: Descriptor | None) -> str:
    """The proto path of json_format's "Failed to parse a field: Failed to parse b field: ...",
    with the index of the element of a repeated field that failed (`events[2].event_id`), as
    the server's validation names fields. The names are the input's keys (either form)."""
    path = ""
    value = fields
    for name in _PARSE_CHAIN.findall(str(exc)):
        field = _field(descriptor, name) if descriptor is not None else None
        if field is None or not isinstance(value, dict):
            return f"{path}.{_snake(name)}" if path else _snake(name)
        path = f"{path}.{field.name}" if path else field.name
        value = value.get(name)
        message = field.message_type
        if field.is_repeated and isinstance(value, list) and message is not None:
            for index, item in enumerate(value):
                if not _parses(item, message):
                    path, value = f"{path}[{index}]", item
                    break
        descriptor = message
    return path


def _parses(value: Any, descriptor: Descriptor) -> bool:
    try:
        json_format.ParseDict(value, message_factory.GetMessageClass(descriptor)())
    except (json_format.ParseError, AttributeError, TypeError):
        return False
    return True


def _reason_of(exc: json_format.ParseError) -> str:
    return _PARSE_CHAIN.sub("", str(exc)).lstrip(": ").strip() or str(exc)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()
