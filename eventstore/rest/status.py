"""gRPC statuses as HTTP answers, the way Google's JSON APIs give them.

The body is the google.rpc.Status in its JSON form with the HTTP code and the gRPC code's name:
`{"code": 409, "status": "FAILED_PRECONDITION", "message": ..., "details": [...]}`, its details
(ErrorInfo, BadRequest, RetryInfo, eventstore.v1.WrongExpectedVersion...) as JSON objects with
their `@type`. Everything a gRPC client can branch on, a REST client can too; nothing is parsed
from message text. The status code follows google.rpc.Code's documented HTTP mapping, with one
refinement from the details: a version conflict (ErrorInfo reason WRONG_EXPECTED_VERSION, or an
event id reused at another version) is a FAILED_PRECONDITION in gRPC, which maps to 400 there,
but HTTP has the precise answer for it: 409 Conflict.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

#: google.rpc.Code → HTTP (google/rpc/code.proto documents each mapping).
HTTP_STATUS: dict[int, int] = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.UNAUTHENTICATED: 401,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
}
#: ErrorInfo reasons that are conflicts with the aggregate's current state: 409, not 400.
CONFLICTS = frozenset({"WRONG_EXPECTED_VERSION", "EVENT_ID_REUSED"})
DETAILS_KEY = "grpc-status-details-bin"
DOMAIN = "eventstore.v1"
_M = TypeVar("_M", bound=Message)


def status_of(
    code: grpc.StatusCode, message: str | None, trailers: Iterable[Any] | None
) -> status_pb2.Status:
    """The call's google.rpc.Status: from its details trailer when the server sent one (ours
    always does), else just its code and message (a status gRPC itself produced)."""
    for key, value in trailers or ():
        if key == DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            if status.code == code.value[0]:
                return status
    return status_pb2.Status(code=code.value[0], message=message or "")


def local_status(code: int, message: str, *details: Message) -> status_pb2.Status:
    """A status of the REST face itself (a request it could not turn into a message), with the
    same details the server gives for the same fault."""
    reason = code_pb2.Code.Name(code)
    packed = [error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN), *details]
    status = status_pb2.Status(code=code, message=message)
    for detail in packed:
        holder = any_pb2.Any()
        holder.Pack(detail)
        status.details.append(holder)
    return status


def bad_request(field: str, description: str) -> status_pb2.Status:
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
    message = f"{field}: {description}" if field else description
    return local_status(
        code_pb2.INVALID_ARGUMENT,
        message,
        error_details_pb2.BadRequest(field_violations=[violation]),
    )


def http_status(status: status_pb2.Status) -> int:
    if status.code == code_pb2.FAILED_PRECONDITION:
        info = _detail(status, error_details_pb2.ErrorInfo)
        if info is not None and info.reason in CONFLICTS:
            return 409
    return HTTP_STATUS.get(status.code, 500)


def retry_after(status: status_pb2.Status) -> int | None:
    """Whole seconds for a Retry-After header, from RetryInfo (None: no retry invited)."""
    info = _detail(status, error_details_pb2.RetryInfo)
    if info is None:
        return None
    delay = float(info.retry_delay.seconds) + info.retry_delay.nanos / 1e9
    seconds: int = math.ceil(delay)
    return max(1, seconds)


def error_body(status: status_pb2.Status) -> tuple[int, dict[str, str], dict[str, Any]]:
    """HTTP status, headers and JSON body of a failed call."""
    http = http_status(status)
    headers = {}
    after = retry_after(status)
    if after is not None:
        headers["Retry-After"] = str(after)
    body: dict[str, Any] = {
        "code": http,
        "status": _code_name(status.code),
        "message": status.message,
        "details": [_detail_json(detail) for detail in status.details],
    }
    return http, headers, body


def _code_name(code: int) -> str:
    try:
        return str(code_pb2.Code.Name(code))
    except ValueError:
        return "UNKNOWN"


def _detail_json(detail: any_pb2.Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = json_format.MessageToDict(detail)
    except (TypeError, KeyError, json_format.Error):
        # A detail type this process does not know (none of ours): its name, not its bytes.
        return {"@type": detail.type_url}
    return result


def _detail(status: status_pb2.Status, kind: type[_M]) -> _M | None:
    for holder in status.details:
        if holder.Is(kind.DESCRIPTOR):
            found = kind()
            holder.Unpack(found)
            return found
    return None
