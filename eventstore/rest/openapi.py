"""The OpenAPI 3 document of the REST/JSON face, from the same google.api.http options and
message descriptors the face routes by. Checked in as docs/openapi.json (a unit test keeps it
equal to what this produces) and served at /openapi.json.

    python -m eventstore.rest.openapi > docs/openapi.json      (make openapi)
"""

from __future__ import annotations

import json
import sys
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from eventstore.rest.routes import Route, routes

_STRING_MESSAGES: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?s$"},
    "google.protobuf.Empty": {"type": "object", "properties": {}, "additionalProperties": False},
}
_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0},
    # Proto3 JSON writes 64-bit integers as strings (JavaScript's numbers lose precision).
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
}
_ERRORS = {
    "400": "Invalid argument (a field violation names the field), or a failed precondition",
    "401": "No valid API key (`Authorization: Bearer <key>`)",
    "403": "The key's principal lacks the grant",
    "404": "Not found",
    "409": "Version conflict (details: eventstore.v1.WrongExpectedVersion) or aborted",
    "429": "Quota exceeded; Retry-After says when to try again",
    "503": "Unavailable (starting, draining, a backend down); retrying is safe",
    "504": "Deadline exceeded",
}


def document(service: Any) -> dict[str, Any]:
    """The OpenAPI document of every annotated method of `service` (a ServiceDescriptor)."""
    schemas: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for route in routes(service):
        paths.setdefault(route.template.replace("=*}", "}"), {})[route.method.lower()] = _operation(
            route, schemas
        )
    schemas["Status"] = {
        "type": "object",
        "description": "google.rpc.Status in JSON, `code` being the HTTP status",
        "properties": {
            "code": {"type": "integer"},
            "status": {"type": "string", "description": "the gRPC code's name"},
            "message": {"type": "string"},
            "details": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"@type": {"type": "string"}},
                    "additionalProperties": True,
                },
            },
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": f"{service.full_name} REST/JSON",
            "version": service.file.package.rsplit(".", 1)[-1],
            "description": "Generated from the google.api.http options of "
            f"{service.file.name} by eventstore.rest.openapi; do not edit.",
        },
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"apiKey": []}],
        "paths": dict(sorted(paths.items())),
    }


def _operation(route: Route, schemas: dict[str, Any]) -> dict[str, Any]:
    request = route.rpc.input_type
    parameters: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": _field_schema(request.fields_by_name[name], schemas),
        }
        for name in route.path_fields
    ]
    operation: dict[str, Any] = {
        "operationId": route.name,
        "tags": [route.rpc.containing_service.name],
    }
    if route.body == "*":
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(request, schemas)}},
        }
    else:
        for field in request.fields:
            if field.name in route.path_fields:
                continue
            schema = _field_schema(field, schemas)
            if field.message_type is not None and field.message_type.full_name.endswith(".Empty"):
                schema = {"type": "boolean", "description": "name it (or =true) to choose it"}
            elif field.message_type is not None and "$ref" in str(schema):
                continue  # a message: not settable from one query parameter
            parameter: dict[str, Any] = {"name": field.name, "in": "query", "schema": schema}
            if field.is_repeated:
                parameter.update(style="form", explode=True)
            parameters.append(parameter)
    if route.name == "Subscribe":
        parameters.append(
            {
                "name": "Last-Event-ID",
                "in": "header",
                "schema": {"type": "string"},
                "description": "resume right after this message (its checkpoint)",
            }
        )
    else:
        parameters.append(
            {
                "name": "Grpc-Timeout",
                "in": "header",
                "schema": {"type": "string", "pattern": "^[0-9]{1,8}[HMSmun]$"},
                "description": "the call's deadline in gRPC's form, e.g. 5S or 250m",
            }
        )
    operation["parameters"] = parameters
    response = _ref(route.rpc.output_type, schemas)
    if route.name == "Subscribe":
        content = {
            "text/event-stream": {
                "schema": {
                    "type": "string",
                    "description": "server-sent events `event` (data: an Event), `caught_up`, "
                    "`heartbeat` and a last `error` (data: a Status); `id:` is the checkpoint",
                }
            }
        }
        _ref(schemas_target(route), schemas)
    else:
        content = {"application/json": {"schema": response}}
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}}
    operation["responses"] = {
        "200": {"description": "OK", "content": content},
        **{code: {"description": text, **error} for code, text in _ERRORS.items()},
    }
    return operation


def schemas_target(route: Route) -> Descriptor:
    """The message an SSE `event` carries: the Event of SubscribeResponse.event."""
    event = route.rpc.output_type.fields_by_name["event"].message_type
    assert event is not None
    return event


def _ref(message: Descriptor, schemas: dict[str, Any]) -> dict[str, Any]:
    known = _STRING_MESSAGES.get(message.full_name)
    if known is not None:
        return dict(known)
    name = message.full_name.removeprefix("eventstore.v1.").replace(".", "_")
    if name not in schemas:
        schemas[name] = {}  # placeholder first: a recursive message refers to itself
        properties = {field.json_name: _field_schema(field, schemas) for field in message.fields}
        schemas[name] = {"type": "object", "properties": properties}
        oneofs = [o for o in message.oneofs if len(o.fields) > 1]
        if oneofs:
            schemas[name]["description"] = "; ".join(
                f"at most one of {', '.join(f.json_name for f in o.fields)}" for o in oneofs
            )
    return {"$ref": f"#/components/schemas/{name}"}


def _field_schema(field: FieldDescriptor, schemas: dict[str, Any]) -> dict[str, Any]:
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        value = _field_schema(message.fields_by_name["value"], schemas)
        return {"type": "object", "additionalProperties": value}
    if message is not None:
        single = _ref(message, schemas)
    elif field.enum_type is not None:
        single = _enum(field.enum_type)
    else:
        single = dict(_SCALARS[field.type])
    return {"type": "array", "items": single} if field.is_repeated else single


def _enum(enum: EnumDescriptor) -> dict[str, Any]:
    return {"type": "string", "enum": [value.name for value in enum.values]}


def render(service: Any) -> str:
    return json.dumps(document(service), indent=2, sort_keys=False) + "\n"


def main() -> None:
    from eventstore.v1 import eventstore_pb2

    sys.stdout.write(render(eventstore_pb2.DESCRIPTOR.services_by_name["EventStore"]))


if __name__ == "__main__":
    main()
