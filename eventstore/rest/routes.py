"""HTTP routes from the google.api.http options of a service's methods (the proto is the one
source: nothing here names an RPC).

The subset of google.api.HttpRule we serve, checked at start-up (a rule outside it stops the
server rather than being served differently from what the proto says): get/post/put/patch/
delete; path variables `{field}` (or `{field=*}`) of top-level string or integer fields, whole
segments only; a custom verb (`:subscribe`) on a literal last segment; body `*` or none;
additional_bindings. Client-streaming methods cannot be transcoded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor

_VARIABLE = re.compile(r"^\{([a-z_][a-z0-9_]*)(?:=\*)?\}$")
_LITERAL = re.compile(r"^[A-Za-z0-9._~-]+(?::[A-Za-z0-9._~-]+)?$")
_PATH_TYPES = {
    FieldDescriptor.TYPE_STRING,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_UINT32,
}


class UnsupportedRule(ValueError):
    """A google.api.http option this face does not serve."""


@dataclass(frozen=True)
class Route:
    """One HTTP binding of one RPC."""

    #: GET, POST, ...
    method: str
    #: the google.api.http path template, e.g. /v1/aggregates/{aggregate_id}/events
    template: str
    #: the request fields bound to path variables, in order
    path_fields: tuple[str, ...]
    #: "*": the JSON body is the request; "": no body (query parameters set the fields)
    body: str
    rpc: MethodDescriptor

    @property
    def name(self) -> str:
        return self.rpc.name

    @property
    def grpc_path(self) -> str:
        """The gRPC method's path: /package.Service/Method."""
        return f"/{self.rpc.containing_service.full_name}/{self.rpc.name}"

    @property
    def streaming(self) -> bool:
        return bool(self.rpc.server_streaming)

    @property
    def aiohttp_path(self) -> str:
        """The template in aiohttp's syntax: `{field=*}` becomes `{field}` (one segment)."""
        return re.sub(r"\{([a-z_][a-z0-9_]*)=\*\}", r"{\1}", self.template)


def routes(service: ServiceDescriptor) -> list[Route]:
    """Every HTTP binding of the service's annotated methods (the others have none)."""
    found: list[Route] = []
    for method in service.methods:
        options = method.GetOptions()
        if not options.HasExtension(annotations_pb2.http):
            continue
        rule = options.Extensions[annotations_pb2.http]
        found += [_route(method, binding) for binding in (rule, *rule.additional_bindings)]
    seen: dict[tuple[str, str], str] = {}
    for route in found:
        key = (route.method, route.aiohttp_path)
        if key in seen:
            raise UnsupportedRule(f"{route.name} and {seen[key]} both bind {key[0]} {key[1]}")
        seen[key] = route.name
    return found


def _route(method: MethodDescriptor, rule: http_pb2.HttpRule) -> Route:
    where = f"{method.full_name}: google.api.http"
    if method.client_streaming:
        raise UnsupportedRule(f"{where}: a client-streaming method has no HTTP mapping")
    kind = rule.WhichOneof("pattern")
    if kind not in ("get", "post", "put", "patch", "delete"):
        raise UnsupportedRule(f"{where}: pattern {kind!r} is not served")
    template = str(getattr(rule, kind))
    if rule.body not in ("", "*"):
        raise UnsupportedRule(f"{where}: body must be '*' or empty, not {rule.body!r}")
    if rule.response_body:
        raise UnsupportedRule(f"{where}: response_body is not served")
    if rule.body and kind in ("get", "delete"):
        raise UnsupportedRule(f"{where}: {kind.upper()} takes no body")
    if not template.startswith("/"):
        raise UnsupportedRule(f"{where}: the path {template!r} must start with /")
    fields: list[str] = []
    segments = template[1:].split("/")
    for position, segment in enumerate(segments):
        variable = _VARIABLE.match(segment)
        if variable is not None:
            name = variable.group(1)
            field = method.input_type.fields_by_name.get(name)
            if field is None or field.type not in _PATH_TYPES or _repeated(field):
                raise UnsupportedRule(
                    f"{where}: path variable {name!r} must name a string or integer field of "
                    f"{method.input_type.name}"
                )
            fields.append(name)
        elif not _LITERAL.match(segment) or (":" in segment and position < len(segments) - 1):
            raise UnsupportedRule(f"{where}: path segment {segment!r} is not served")
    return Route(kind.upper(), template, tuple(fields), rule.body, method)


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)
