"""The one place where errors become gRPC statuses, with structured details.

One table, keyed by error type, says for each error what the caller should do: its status code,
its ErrorInfo reason, whether a RetryInfo invites a retry (only where retrying can succeed),
what the message says, and whether it is expected (logged without a traceback). The most
specific type in an error's class hierarchy wins. Clients never parse message text: every
status carries google.rpc details and, for version conflicts, our own
eventstore.v1.WrongExpectedVersion. Anything not in the table becomes INTERNAL with a request
id, is logged with its traceback, and leaks nothing of our internals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from eventstore.api.admission import BackendNotConfigured, NotReady, ShuttingDown
from eventstore.domain.access import (
    GrantsChanged,
    PermissionDenied,
    QuotaExceeded,
    Unauthenticated,
)
from eventstore.domain.errors import (
    AggregateNotFound,
    BackendRejected,
    EventIdReused,
    InvalidArgument,
    NotYetSearchable,
    SnapshotNotFound,
    StorageUnavailable,
    WrongExpectedVersion,
)
from eventstore.domain.personal import (
    MasterKeyMissing,
    PersonalDataNotConfigured,
    SealBroken,
    SubjectErased,
)
from eventstore.domain.schemas import SchemaIncompatible, SchemaNotFound, SchemaVersionConflict
from eventstore.usecases.append import ContentionExhausted
from eventstore.v1 import eventstore_pb2 as pb
from eventstore.wire.events import expected_to_proto

log = structlog.get_logger(__name__)

DOMAIN = "eventstore.v1"
RETRY_DELAY_MS = 200
#: OpenSearch's refresh interval for our indices (search/documents.py).
SEARCH_REFRESH_S = 1.0


def _retry_info(seconds: float = RETRY_DELAY_MS / 1000) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(max(int(seconds * 1e9), 1_000_000))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def _bad_request(exc: Any) -> list[Message]:
    return [
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in exc.violations
            ]
        )
    ]


def _version_conflict(exc: Any) -> list[Message]:
    return [
        pb.WrongExpectedVersion(
            aggregate_id=exc.aggregate_id,
            expected=expected_to_proto(exc.expected),
            actual_version=exc.actual,
        )
    ]


def _resource(resource_type: str) -> Callable[[Any], list[Message]]:
    def details(exc: Any) -> list[Message]:
        return [
            error_details_pb2.ResourceInfo(
                resource_type=resource_type, resource_name=exc.aggregate_id
            )
        ]

    return details


def _quota(exc: Any) -> list[Message]:
    return [
        error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=f"principal:{exc.principal}",
                    description=f"{exc.quota} is {exc.limit:.10g}",
                )
            ]
        )
    ]


def _schema_problems(exc: Any) -> list[Message]:
    return [
        error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=f"SCHEMA_{exc.mode.name}_COMPATIBILITY",
                    subject=problem.path,
                    description=problem.reason,
                )
                for problem in exc.problems
            ]
        )
    ]


def _no_details(exc: Any) -> list[Message]:
    return []


def _no_metadata(exc: Any) -> dict[str, str]:
    return {}


@dataclass(frozen=True, slots=True)
class Rule:
    """How one error type reaches the caller."""

    code: int
    #: ErrorInfo.reason: what a program branches on
    reason: str
    #: attach RetryInfo: the same request may succeed later (only then)
    retry: bool
    #: no traceback in the log: part of normal operation
    expected: bool = True
    #: the status message; None: the error's own text (written for clients)
    message: str | None = None
    metadata: Callable[[Any], dict[str, str]] = _no_metadata
    details: Callable[[Any], list[Message]] = _no_details


#: Not in the table: a bug of ours. Logged with its traceback; the caller learns nothing more.
UNEXPECTED = Rule(
    code_pb2.INTERNAL, "INTERNAL", retry=False, expected=False, message="internal error"
)
UNAVAILABLE_MESSAGE = "a backend is unavailable; retrying the same request is safe"

RULES: dict[type[BaseException], Rule] = {
    InvalidArgument: Rule(
        code_pb2.INVALID_ARGUMENT, "INVALID_ARGUMENT", retry=False, details=_bad_request
    ),
    WrongExpectedVersion: Rule(
        code_pb2.FAILED_PRECONDITION,
        "WRONG_EXPECTED_VERSION",
        retry=False,
        metadata=lambda exc: {
            "aggregate_id": exc.aggregate_id,
            "expected_version": str(exc.expected),
            "actual_version": str(exc.actual),
        },
        details=_version_conflict,
    ),
    EventIdReused: Rule(
        code_pb2.FAILED_PRECONDITION,
        "EVENT_ID_REUSED",
        retry=False,
        metadata=lambda exc: {
            "aggregate_id": exc.aggregate_id,
            "field": exc.field,
            "committed_version": str(exc.version),
        },
    ),
    AggregateNotFound: Rule(
        code_pb2.NOT_FOUND, "AGGREGATE_NOT_FOUND", retry=False, details=_resource("aggregate")
    ),
    SnapshotNotFound: Rule(
        code_pb2.NOT_FOUND, "SNAPSHOT_NOT_FOUND", retry=False, details=_resource("snapshot")
    ),
    # A version the compatibility mode refuses: the caller changes the schema (or the mode).
    SchemaIncompatible: Rule(
        code_pb2.FAILED_PRECONDITION,
        "SCHEMA_INCOMPATIBLE",
        retry=False,
        metadata=lambda exc: {
            "aggregate_type": exc.aggregate_type,
            "event_type": exc.event_type,
            "compatibility": exc.mode.value,
        },
        details=_schema_problems,
    ),
    SchemaVersionConflict: Rule(
        code_pb2.FAILED_PRECONDITION,
        "SCHEMA_VERSION_CONFLICT",
        retry=False,
        metadata=lambda exc: {
            "aggregate_type": exc.aggregate_type,
            "event_type": exc.event_type,
            "expected_version": str(exc.expected),
            "latest_version": str(exc.actual),
        },
    ),
    SchemaNotFound: Rule(code_pb2.NOT_FOUND, "SCHEMA_NOT_FOUND", retry=False),
    Unauthenticated: Rule(code_pb2.UNAUTHENTICATED, "UNAUTHENTICATED", retry=False),
    PermissionDenied: Rule(
        code_pb2.PERMISSION_DENIED,
        "PERMISSION_DENIED",
        retry=False,
        metadata=lambda exc: {
            "principal": exc.principal,
            "operation": exc.operation.value,
            "aggregate_type": exc.aggregate_type,
        },
    ),
    # The caller's grants changed mid-stream: it must reconnect to learn what it may still see.
    GrantsChanged: Rule(
        code_pb2.ABORTED,
        "PERMISSIONS_CHANGED",
        retry=False,
        metadata=lambda exc: {"principal": exc.principal},
    ),
    # RetryInfo carries the quota's own delay (see _retry_delay).
    QuotaExceeded: Rule(
        code_pb2.RESOURCE_EXHAUSTED,
        "QUOTA_EXCEEDED",
        retry=True,
        metadata=lambda exc: {"principal": exc.principal, "quota": exc.quota},
        details=_quota,
    ),
    ContentionExhausted: Rule(
        code_pb2.ABORTED,
        "CONTENTION",
        retry=True,
        metadata=lambda exc: {"aggregate_id": exc.aggregate_id},
    ),
    # The caller's deadline (or the server's limit) came before its write was searchable.
    NotYetSearchable: Rule(
        code_pb2.DEADLINE_EXCEEDED,
        "NOT_YET_SEARCHABLE",
        retry=True,
        metadata=lambda exc: {
            "indexer_lag": str(exc.indexer_lag),
            "indexed_through": exc.indexed_through.isoformat() if exc.indexed_through else "",
            "waited_s": f"{exc.waited_s:.3f}",
        },
    ),
    StorageUnavailable: Rule(
        code_pb2.UNAVAILABLE, "BACKEND_UNAVAILABLE", retry=True, message=UNAVAILABLE_MESSAGE
    ),
    NotReady: Rule(code_pb2.UNAVAILABLE, "SERVER_STARTING", retry=True),
    ShuttingDown: Rule(code_pb2.UNAVAILABLE, "SERVER_DRAINING", retry=True),
    # UNIMPLEMENTED, not FAILED_PRECONDITION: the caller can change nothing that would make
    # this deployment serve the RPC (FAILED_PRECONDITION invites fixing state and retrying),
    # and UNIMPLEMENTED is what gRPC itself says of a method a server does not serve.
    BackendNotConfigured: Rule(code_pb2.UNIMPLEMENTED, "BACKEND_NOT_CONFIGURED", retry=False),
    # A backend refused what we sent it: our bug, logged with its traceback like any other.
    BackendRejected: UNEXPECTED,
    # Personal data (domain/personal.py). Not configured: the deployment must give the
    # setting before such events can be stored; nothing is stored in the clear instead.
    PersonalDataNotConfigured: Rule(
        code_pb2.FAILED_PRECONDITION,
        "PERSONAL_DATA_NOT_CONFIGURED",
        retry=False,
        metadata=lambda exc: {"setting": exc.setting},
    ),
    SubjectErased: Rule(
        code_pb2.FAILED_PRECONDITION,
        "SUBJECT_ERASED",
        retry=False,
        metadata=lambda exc: {"field": exc.field},
    ),
    MasterKeyMissing: Rule(
        code_pb2.FAILED_PRECONDITION,
        "MASTER_KEY_MISSING",
        retry=False,
        metadata=lambda exc: {"master_key_id": exc.master_key_id},
    ),
    # A sealed payload that does not open was altered (or moved): never expected.
    SealBroken: UNEXPECTED,
}


def rule_for(exc: BaseException) -> Rule:
    """The rule of the most specific type of `exc` in the table."""
    for cls in type(exc).__mro__:
        rule = RULES.get(cls)
        if rule is not None:
            return rule
    return UNEXPECTED


def _retry_delay(exc: BaseException) -> float:
    if isinstance(exc, QuotaExceeded):
        return exc.retry_after_s
    if isinstance(exc, NotYetSearchable):
        return SEARCH_REFRESH_S  # what makes new documents searchable
    return RETRY_DELAY_MS / 1000


def _pack(details: list[Message]) -> list[any_pb2.Any]:
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return packed


def to_status(
    exc: BaseException, request_id: str, log_unexpected: bool = True
) -> status_pb2.Status:
    rule = rule_for(exc)
    if not rule.expected and log_unexpected:
        log.error("unexpected error", request_id=request_id, exc_info=exc)
    message = str(exc) if rule.message is None else rule.message
    if not rule.expected:
        message = f"{message} (request id {request_id})"
        # Nothing of an unexpected error's text or type may reach the caller.
        details: list[Message] = []
    else:
        info = error_details_pb2.ErrorInfo(
            reason=rule.reason, domain=DOMAIN, metadata=rule.metadata(exc)
        )
        details = [info, *rule.details(exc)]
        if rule.retry:
            details.append(_retry_info(_retry_delay(exc)))
    details.append(error_details_pb2.RequestInfo(request_id=request_id))
    return status_pb2.Status(code=rule.code, message=message, details=_pack(details))


def is_expected(exc: BaseException) -> bool:
    """Errors that are part of normal operation (no traceback in the log)."""
    return rule_for(exc).expected


def grpc_code(status: status_pb2.Status) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == status.code:
            return code
    return grpc.StatusCode.UNKNOWN
