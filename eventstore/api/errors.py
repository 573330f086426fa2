"""The one place where errors become gRPC statuses, with structured details.

Clients never parse message text: every status carries google.rpc details (BadRequest,
ErrorInfo, RetryInfo, ResourceInfo, RequestInfo) and, for version conflicts, our own
eventstore.v1.WrongExpectedVersion. Anything unexpected becomes INTERNAL with a request id,
is logged with its traceback, and leaks nothing of our internals.
"""

from __future__ import annotations

import grpc
import structlog
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from eventstore.domain.access import (
    GrantsChanged,
    PermissionDenied,
    QuotaExceeded,
    Unauthenticated,
)
from eventstore.domain.errors import (
    AggregateNotFound,
    InvalidArgument,
    SnapshotNotFound,
    StorageUnavailable,
    WrongExpectedVersion,
)
from eventstore.usecases.append import ContentionExhausted
from eventstore.v1 import eventstore_pb2 as pb
from eventstore.wire.events import expected_to_proto

log = structlog.get_logger(__name__)

DOMAIN = "eventstore.v1"
RETRY_DELAY_MS = 200


def _pack(*details: Message) -> list[any_pb2.Any]:
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return packed


def _retry_info(seconds: float = RETRY_DELAY_MS / 1000) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(max(int(seconds * 1e9), 1_000_000))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def to_status(
    exc: BaseException, request_id: str, log_unexpected: bool = True
) -> status_pb2.Status:
    request_info = error_details_pb2.RequestInfo(request_id=request_id)
    if isinstance(exc, InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in exc.violations
            ]
        )
        return status_pb2.Status(
            code=code_pb2.INVALID_ARGUMENT,
            message=str(exc),
            details=_pack(bad_request, request_info),
        )
    if isinstance(exc, WrongExpectedVersion):
        info = error_details_pb2.ErrorInfo(
            reason="WRONG_EXPECTED_VERSION",
            domain=DOMAIN,
            metadata={
                "aggregate_id": exc.aggregate_id,
                "expected_version": str(exc.expected),
                "actual_version": str(exc.actual),
            },
        )
        detail = pb.WrongExpectedVersion(
            aggregate_id=exc.aggregate_id,
            expected=expected_to_proto(exc.expected),
            actual_version=exc.actual,
        )
        return status_pb2.Status(
            code=code_pb2.FAILED_PRECONDITION,
            message=str(exc),
            details=_pack(info, detail, request_info),
        )
    if isinstance(exc, AggregateNotFound):
        resource = error_details_pb2.ResourceInfo(
            resource_type="aggregate", resource_name=exc.aggregate_id
        )
        return status_pb2.Status(
            code=code_pb2.NOT_FOUND, message=str(exc), details=_pack(resource, request_info)
        )
    if isinstance(exc, SnapshotNotFound):
        resource = error_details_pb2.ResourceInfo(
            resource_type="snapshot", resource_name=exc.aggregate_id
        )
        return status_pb2.Status(
            code=code_pb2.NOT_FOUND, message=str(exc), details=_pack(resource, request_info)
        )
    if isinstance(exc, Unauthenticated):
        info = error_details_pb2.ErrorInfo(reason="UNAUTHENTICATED", domain=DOMAIN)
        return status_pb2.Status(
            code=code_pb2.UNAUTHENTICATED, message=str(exc), details=_pack(info, request_info)
        )
    if isinstance(exc, PermissionDenied):
        info = error_details_pb2.ErrorInfo(
            reason="PERMISSION_DENIED",
            domain=DOMAIN,
            metadata={
                "principal": exc.principal,
                "operation": exc.operation.value,
                "aggregate_type": exc.aggregate_type,
            },
        )
        return status_pb2.Status(
            code=code_pb2.PERMISSION_DENIED, message=str(exc), details=_pack(info, request_info)
        )
    if isinstance(exc, GrantsChanged):
        info = error_details_pb2.ErrorInfo(
            reason="PERMISSIONS_CHANGED", domain=DOMAIN, metadata={"principal": exc.principal}
        )
        return status_pb2.Status(
            code=code_pb2.ABORTED, message=str(exc), details=_pack(info, request_info)
        )
    if isinstance(exc, QuotaExceeded):
        failure = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=f"principal:{exc.principal}",
                    description=f"{exc.quota} is {exc.limit:g}",
                )
            ]
        )
        return status_pb2.Status(
            code=code_pb2.RESOURCE_EXHAUSTED,
            message=str(exc),
            details=_pack(failure, _retry_info(exc.retry_after_s), request_info),
        )
    if isinstance(exc, StorageUnavailable):
        info = error_details_pb2.ErrorInfo(reason="BACKEND_UNAVAILABLE", domain=DOMAIN)
        return status_pb2.Status(
            code=code_pb2.UNAVAILABLE,
            message="a backend is unavailable; retrying the same request is safe",
            details=_pack(info, _retry_info(), request_info),
        )
    if isinstance(exc, ContentionExhausted):
        info = error_details_pb2.ErrorInfo(
            reason="CONTENTION", domain=DOMAIN, metadata={"aggregate_id": exc.aggregate_id}
        )
        return status_pb2.Status(
            code=code_pb2.ABORTED,
            message=str(exc),
            details=_pack(info, _retry_info(), request_info),
        )
    if log_unexpected:
        log.error("unexpected error", request_id=request_id, exc_info=exc)
    return status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error (request id {request_id})",
        details=_pack(request_info),
    )


def is_expected(exc: BaseException) -> bool:
    """Errors that are part of normal operation (no traceback in the log)."""
    return isinstance(
        exc,
        InvalidArgument
        | WrongExpectedVersion
        | AggregateNotFound
        | StorageUnavailable
        | ContentionExhausted
        | Unauthenticated
        | PermissionDenied
        | GrantsChanged
        | QuotaExceeded,
    )


def grpc_code(status: status_pb2.Status) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == status.code:
            return code
    return grpc.StatusCode.UNKNOWN
