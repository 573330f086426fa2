"""Services registered with request decoding of our own.

The generated `add_*Servicer_to_server` functions decode requests with `FromString`, and when
that fails (invalid UTF-8 in a string field, corrupt wire bytes) gRPC answers UNKNOWN before
any code of ours runs. Here a request that does not decode becomes an `Undecodable` value
instead, handed to the servicer like any request: ours refuse it as INVALID_ARGUMENT through
the one error mapping, with the metrics and logs of every other refusal.

A method may also have a precheck: a refusal read from the request's bytes before they are
decoded in full, for what decoding alone makes costly (see api/precheck.py). It becomes an
`Undecodable` value too, with the precheck's error.

It also notes each request's size as received, for quotas that count bytes: measuring the
decoded message again (`ByteSize`) would re-encode it, milliseconds for a large append.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from eventstore.domain.errors import InvalidArgument

#: The size of the request of the call being served. gRPC decodes a request in the task that
#: then runs the call's handler, so the handler sees the value its own request set.
_RECEIVED_BYTES: ContextVar[int | None] = ContextVar("received_bytes", default=None)


def received_bytes(request: Message) -> int:
    """The bytes `request` took on the wire; measured again only for a request that did not
    come through our decoding (a test calling a servicer directly)."""
    size = _RECEIVED_BYTES.get()
    return size if size is not None else request.ByteSize()


#: A refusal found in a request's bytes without decoding them in full, or None.
Precheck = Callable[[bytes], InvalidArgument | None]


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A request refused from its bytes: not a valid message of its type, or refused by its
    method's precheck."""

    refusal: InvalidArgument

    @classmethod
    def invalid(cls, message_type: str, reason: str) -> Undecodable:
        return cls(
            InvalidArgument.of("request", f"is not a valid {message_type} message ({reason})")
        )

    def error(self) -> InvalidArgument:
        return self.refusal


def _deserializer(
    message_class: type[Message], precheck: Precheck | None
) -> Callable[[bytes], Message | Undecodable]:
    name = message_class.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Message | Undecodable:
        _RECEIVED_BYTES.set(len(data))
        if precheck is not None and (refusal := precheck(data)) is not None:
            return Undecodable(refusal)
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            return Undecodable.invalid(name, str(exc) or "corrupt wire format")

    return deserialize


def _handler(
    method: MethodDescriptor, behaviour: Any, precheck: Precheck | None
) -> grpc.RpcMethodHandler[Any, Any]:
    request = message_factory.GetMessageClass(method.input_type)
    response = message_factory.GetMessageClass(method.output_type)
    if method.client_streaming and not method.server_streaming:
        raise ValueError(f"{method.full_name}: client streaming alone is not supported")
    # Bidirectional: each request message is decoded as it arrives; one that does not decode
    # reaches the servicer as an Undecodable in the request stream.
    make = (
        grpc.stream_stream_rpc_method_handler
        if method.client_streaming
        else grpc.unary_stream_rpc_method_handler
        if method.server_streaming
        else grpc.unary_unary_rpc_method_handler
    )
    return make(
        behaviour,
        request_deserializer=_deserializer(request, precheck),
        response_serializer=response.SerializeToString,
    )


def add_service(
    server: grpc.aio.Server,
    service: ServiceDescriptor,
    servicer: object,
    wrap: Callable[[Any], Any] = lambda behaviour: behaviour,
    around: Callable[
        [grpc.GenericRpcHandler[Any, Any]], grpc.GenericRpcHandler[Any, Any]
    ] = lambda handler: handler,
    prechecks: Mapping[str, Precheck] | None = None,
) -> None:
    """Serve every method of `service` from `servicer` (a method of the same name each).

    `wrap(behaviour)` adapts a servicer that does not know `Undecodable` (a library's, such as
    gRPC health); `around(handler)` may answer a call before its request is read;
    `prechecks` (by method name) run on a request's bytes before they are decoded."""
    prechecks = prechecks or {}
    handlers = {
        method.name: _handler(
            method, wrap(getattr(servicer, method.name)), prechecks.get(method.name)
        )
        for method in service.methods
    }
    server.add_generic_rpc_handlers(
        (around(grpc.method_handlers_generic_handler(service.full_name, handlers)),)
    )
