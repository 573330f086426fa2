"""The REST/JSON face: an aiohttp server whose routes come from the proto's google.api.http
options, forwarding every call to this process's own gRPC service over a private loopback
channel (a Unix socket only this process knows). Authentication, authorization, quotas,
validation, admission (starting, draining) and the error table are therefore the gRPC ones:
the face adds no rule of its own beyond turning HTTP into request messages and statuses into
HTTP answers (docs/architecture.md, "The REST/JSON face").

  unary RPC            one JSON object
  ReadAggregate        one JSON object {"events": [...]}, streamed page by page
  Subscribe            server-sent events: `id:` is the message's checkpoint, Last-Event-ID resumes
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NamedTuple

import grpc
import structlog
from aiohttp import web
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.rpc import code_pb2, status_pb2

from eventstore.api.auth import Authenticator
from eventstore.api.errors import to_status
from eventstore.api.servicer import observe
from eventstore.rest import messages, openapi
from eventstore.rest.routes import Route, routes
from eventstore.rest.status import bad_request, error_body, local_status, status_of
from eventstore.sizes import GRPC_MAX_MESSAGE_BYTES

log = structlog.get_logger(__name__)

#: HTTP headers passed on as gRPC metadata (lower case): the credential and the request id.
FORWARDED = ("authorization", "x-request-id")
#: Headers of an event stream: no caching, no buffering by proxies (nginx honours the last).
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Gateway:
    """`target`: the gRPC address to forward to (the server's private Unix socket);
    `authenticator` and `certificates` as the gRPC port's CredentialGate, to refuse a call
    that cannot be authenticated before its body is read (as gRPC does before its request)."""

    def __init__(
        self,
        service: Any,
        target: str,
        authenticator: Authenticator,
        certificates: bool,
        max_body_bytes: int,
    ) -> None:
        self._routes = routes(service)
        self._authenticator = authenticator
        self._certificates = certificates
        self._channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
            ],
        )
        self._document = json.dumps(openapi.document(service), indent=2).encode()
        self.app = web.Application(client_max_size=max_body_bytes, middlewares=[_errors])
        for route in self._routes:
            self.app.router.add_route(route.method, route.aiohttp_path, self._handler(route))
        self.app.router.add_get("/openapi.json", self._openapi)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def routes(self) -> list[Route]:
        return list(self._routes)

    async def start(self, listen: str, ssl_context: ssl.SSLContext | None, shared: bool) -> int:
        """Listen on host:port (port 0: any); `shared`: SO_REUSEPORT, for a worker process."""
        host, _, port = listen.rpartition(":")
        # handler_cancellation: a client that goes away cancels its handler, which cancels the
        # gRPC call (a subscription's Kafka reader is closed at once, not at its next write).
        self._runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            host.strip("[]") or None,
            int(port),
            ssl_context=ssl_context,
            reuse_port=shared,
        )
        await site.start()
        # The port bound (port 0: the one the kernel chose), from the runner's addresses.
        self.port = int(self._runner.addresses[0][1]) if self._runner.addresses else int(port)
        return self.port

    async def stop(self, grace: float) -> None:
        """Stop listening; calls in flight get `grace` seconds (their gRPC side is draining)."""
        if self._runner is not None:
            self._runner.server.shutdown_timeout = grace  # type: ignore[union-attr]
            await self._runner.cleanup()
        await self._channel.close(None)

    async def _openapi(self, _request: web.Request) -> web.StreamResponse:
        return web.Response(body=self._document, content_type="application/json")

    def _handler(self, route: Route) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            metadata = _metadata(request)
            refusal = self._authenticator.refuse_early(metadata, self._certificates)
            if refusal is not None:
                observe(route.name, "UNAUTHENTICATED", 0.0)
                return _error(to_status(refusal, _request_id(metadata)))
            body = await request.read() if route.body else None
            try:
                message = messages.request_from(
                    route, dict(request.match_info), request.query.items(), body
                )
                if route.name == "Subscribe":
                    _resume(message, request.headers.get("Last-Event-ID"))
            except messages.BadInput as exc:
                return _error(bad_request(exc.field, exc.description))
            try:
                out = Outgoing(metadata, _timeout(request.headers.get("Grpc-Timeout")))
            except ValueError as exc:
                return _error(bad_request("Grpc-Timeout", str(exc)))
            if not route.streaming:
                return await self._unary(route, message, out)
            if route.name == "Subscribe":
                return await self._events(route, message, out, request)
            return await self._pages(route, message, out, request)

        return handle

    async def _unary(self, route: Route, message: Message, out: Outgoing) -> web.StreamResponse:
        call = self._channel.unary_unary(
            route.grpc_path,
            request_serializer=_serialize,
            response_deserializer=GetMessageClass(route.rpc.output_type).FromString,
        )
        try:
            response = await call(message, metadata=out.metadata, timeout=out.timeout)
        except grpc.aio.AioRpcError as exc:
            return _error(status_of(exc.code(), exc.details(), exc.trailing_metadata()))
        return web.json_response(messages.to_json(response))

    def _stream(self, route: Route, message: Message, out: Outgoing) -> Any:
        return self._channel.unary_stream(
            route.grpc_path,
            request_serializer=_serialize,
            response_deserializer=GetMessageClass(route.rpc.output_type).FromString,
        )(message, metadata=out.metadata, timeout=out.timeout)

    async def _pages(
        self,
        route: Route,
        message: Message,
        out: Outgoing,
        request: web.Request,
    ) -> web.StreamResponse:
        """A server-streaming read as ONE JSON object: the pages' repeated field concatenated,
        written page by page (memory stays one page). The status is chosen when the first page
        (or the error) arrives; an error after it cuts the body short, which no JSON parser
        takes for a complete answer."""
        call = self._stream(route, message, out)
        (field,) = route.rpc.output_type.fields  # ReadAggregateResponse: `events` only
        pages = aiter(call)
        try:
            try:
                first = await anext(pages, None)
            except grpc.aio.AioRpcError as exc:
                return _error(status_of(exc.code(), exc.details(), exc.trailing_metadata()))
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            await response.write(f'{{"{field.json_name}": ['.encode())
            written = 0
            page = first
            while page is not None:
                for item in getattr(page, field.name):
                    prefix = b"," if written else b""
                    await response.write(prefix + json.dumps(messages.to_json(item)).encode())
                    written += 1
                try:
                    page = await anext(pages, None)
                except grpc.aio.AioRpcError as exc:
                    # Closing without the last chunk: the client sees a broken transfer.
                    log.info("read cut short", rpc=route.name, code=exc.code().name)
                    if request.transport is not None:
                        request.transport.close()
                    return response
            await response.write(b"]}")
            await response.write_eof()
            return response
        finally:
            call.cancel()

    async def _events(
        self,
        route: Route,
        message: Message,
        out: Outgoing,
        request: web.Request,
    ) -> web.StreamResponse:
        """Subscribe as server-sent events. Each message is an SSE event named after its kind
        (`event`, `caught_up`, `heartbeat`) whose `id:` is its checkpoint, so an EventSource's
        Last-Event-ID resumes right after the last message it got. The server accepts the
        subscription (authorization, filters, bounds) before it sends its first message or
        initial metadata; the HTTP status waits for that. A later error is a last `error`
        event carrying the status JSON."""
        call = self._stream(route, message, out)
        try:
            await call.initial_metadata()
            if call.done():
                code = await call.code()
                if code != grpc.StatusCode.OK:
                    return _error(
                        status_of(code, await call.details(), await call.trailing_metadata())
                    )
            response = web.StreamResponse(headers=SSE_HEADERS)
            await response.prepare(request)
            try:
                async for item in call:
                    await response.write(_sse(item))
            except grpc.aio.AioRpcError as exc:
                _, _, body = error_body(
                    status_of(exc.code(), exc.details(), exc.trailing_metadata())
                )
                await response.write(f"event: error\ndata: {json.dumps(body)}\n\n".encode())
            await response.write_eof()
            return response
        finally:
            call.cancel()


class Outgoing(NamedTuple):
    """What a forwarded call carries besides its request."""

    metadata: tuple[tuple[str, str], ...]
    #: seconds; None: no deadline (the server's own limits apply)
    timeout: float | None


#: gRPC's timeout units (the grpc-timeout header of the HTTP/2 protocol, which grpc-gateway
#: also reads from HTTP/1.1 requests).
_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def _timeout(header: str | None) -> float | None:
    """The call's deadline from `Grpc-Timeout: <1-8 digits><H|M|S|m|u|n>`, e.g. `5S`, `250m`.
    QueryEvents' `min_consistency_token` waits up to it, as for a gRPC caller's deadline."""
    if header is None:
        return None
    digits, unit = header[:-1], header[-1:]
    if not (digits.isdigit() and len(digits) <= 8 and unit in _UNITS):
        raise ValueError(f"{header!r} is not a gRPC timeout (e.g. 5S, 250m)")
    return int(digits) * _UNITS[unit]


def _sse(item: Any) -> bytes:
    kind = item.WhichOneof("message") or "message"
    data = messages.to_json(getattr(item, kind)) if kind == "event" else {}
    lines = [f"event: {kind}", f"data: {json.dumps(data)}"]
    if item.checkpoint:
        lines.insert(0, f"id: {item.checkpoint}")
    return ("\n".join(lines) + "\n\n").encode()


def _resume(message: Message, last_event_id: str | None) -> None:
    """Last-Event-ID (an EventSource reconnecting) resumes right after that message, whatever
    start the URL names: the URL is the one the subscription was first opened with."""
    if last_event_id:
        message.checkpoint = last_event_id  # type: ignore[attr-defined]


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _metadata(request: web.Request) -> tuple[tuple[str, str], ...]:
    return tuple((name, value) for name in FORWARDED for value in request.headers.getall(name, ()))


def _request_id(metadata: Iterable[tuple[str, str]]) -> str:
    for key, value in metadata:
        if key == "x-request-id":
            return value
    return f"rest-{time.monotonic_ns():x}"


def _error(status: status_pb2.Status) -> web.StreamResponse:
    http, headers, body = error_body(status)
    return web.json_response(body, status=http, headers=headers)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own refusals (no such route, wrong method, body too large) in our shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {
            404: code_pb2.NOT_FOUND,
            405: code_pb2.UNIMPLEMENTED,
            413: code_pb2.INVALID_ARGUMENT,
        }.get(exc.status, code_pb2.INVALID_ARGUMENT)
        _, headers, body = error_body(local_status(code, exc.reason))
        headers.update({k: v for k, v in exc.headers.items() if k == "Allow"})
        body["code"] = exc.status
        return web.json_response(body, status=exc.status, headers=headers)
