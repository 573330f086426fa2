"""Calls refused from their headers, before their request is read.

gRPC reads a unary request whole (up to the message limit, several MiB) before the servicer
runs: a caller without a valid credential could make the server hold many such requests at
once (160 unauthenticated 8 MiB appends took a server from 241 to 765 MB). When the headers
alone show that a call cannot be authenticated (no API key and no client certificate possible,
a key that is not valid, several authorization headers), the call gets a handler that never
reads its request and answers UNAUTHENTICATED as the servicer would: same status, details,
metrics and log line. The request's bytes stay in gRPC's flow-control window, or unsent.
"""

from __future__ import annotations

from typing import Any

import grpc

from eventstore.api.auth import Authenticator
from eventstore.api.servicer import abort_with, observe, request_id_of
from eventstore.domain.access import Unauthenticated


class CredentialGate(grpc.GenericRpcHandler):  # type: ignore[type-arg] # generic in stubs only
    """Wraps a service's handlers; `certificates`: the server verifies client certificates."""

    def __init__(
        self,
        inner: grpc.GenericRpcHandler[Any, Any],
        authenticator: Authenticator,
        certificates: bool,
    ) -> None:
        self._inner = inner
        self._authenticator = authenticator
        self._certificates = certificates

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        refusal = self._authenticator.refuse_early(
            handler_call_details.invocation_metadata,
            self._certificates,
        )
        if refusal is None:
            return handler
        method = str(handler_call_details.method).rsplit("/", 1)[-1]
        # A streaming-request handler: gRPC hands it the request only when it asks, and this
        # one never does.
        return grpc.stream_stream_rpc_method_handler(_refuse(method, refusal))


def _refuse(method: str, refusal: Unauthenticated) -> Any:
    async def refuse(_requests: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        observe(method, grpc.StatusCode.UNAUTHENTICATED.name, 0.0)
        await abort_with(refusal, request_id_of(context), context)

    return refuse
