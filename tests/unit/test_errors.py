"""Every row of the error table (api/errors.py): status code, ErrorInfo reason, RetryInfo only
for errors a retry can cure, the other details, and whether the error is logged as expected."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from eventstore.api.admission import BackendNotConfigured, NotReady, ShuttingDown
from eventstore.api.errors import RULES, is_expected, to_status
from eventstore.domain.access import (
    GrantsChanged,
    Operation,
    PermissionDenied,
    QuotaExceeded,
    Unauthenticated,
)
from eventstore.domain.errors import (
    AggregateNotFound,
    BackendRejected,
    EventIdReused,
    FieldViolation,
    InvalidArgument,
    NotYetSearchable,
    SnapshotNotFound,
    StorageUnavailable,
    WrongExpectedVersion,
)
from eventstore.domain.events import ExpectedVersion
from eventstore.domain.personal import (
    MasterKeyMissing,
    PersonalDataNotConfigured,
    SealBroken,
    SubjectErased,
)
from eventstore.domain.schemas import (
    Compatibility,
    Problem,
    SchemaIncompatible,
    SchemaNotFound,
    SchemaVersionConflict,
)
from eventstore.usecases.append import ContentionExhausted
from eventstore.v1 import eventstore_pb2 as pb


@dataclass
class Row:
    error: BaseException
    code: int
    #: None: no ErrorInfo (unexpected errors tell the caller nothing)
    reason: str | None
    retry_s: float | None
    expected: bool = True
    metadata: dict[str, str] = field(default_factory=dict)
    #: detail types besides ErrorInfo, RetryInfo and RequestInfo
    details: tuple[type[Message], ...] = ()


ROWS: dict[type[BaseException], Row] = {
    InvalidArgument: Row(
        InvalidArgument([FieldViolation("a", "bad"), FieldViolation("b", "worse")]),
        code_pb2.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        None,
        details=(error_details_pb2.BadRequest,),
    ),
    WrongExpectedVersion: Row(
        WrongExpectedVersion("agg", ExpectedVersion.exact(3), 5),
        code_pb2.FAILED_PRECONDITION,
        "WRONG_EXPECTED_VERSION",
        None,
        metadata={"aggregate_id": "agg", "expected_version": "3", "actual_version": "5"},
        details=(pb.WrongExpectedVersion,),
    ),
    EventIdReused: Row(
        EventIdReused("agg", 1, 4, "data"),
        code_pb2.FAILED_PRECONDITION,
        "EVENT_ID_REUSED",
        None,
        metadata={"aggregate_id": "agg", "field": "events[1]", "committed_version": "4"},
    ),
    AggregateNotFound: Row(
        AggregateNotFound("agg"),
        code_pb2.NOT_FOUND,
        "AGGREGATE_NOT_FOUND",
        None,
        details=(error_details_pb2.ResourceInfo,),
    ),
    SnapshotNotFound: Row(
        SnapshotNotFound("agg", 7),
        code_pb2.NOT_FOUND,
        "SNAPSHOT_NOT_FOUND",
        None,
        details=(error_details_pb2.ResourceInfo,),
    ),
    SchemaIncompatible: Row(
        SchemaIncompatible(
            "Order", "Placed", Compatibility.BACKWARD, [Problem("$.total", "is required now")]
        ),
        code_pb2.FAILED_PRECONDITION,
        "SCHEMA_INCOMPATIBLE",
        None,
        metadata={"aggregate_type": "Order", "event_type": "Placed", "compatibility": "backward"},
        details=(error_details_pb2.PreconditionFailure,),
    ),
    SchemaVersionConflict: Row(
        SchemaVersionConflict("Order", "Placed", 3, 4),
        code_pb2.FAILED_PRECONDITION,
        "SCHEMA_VERSION_CONFLICT",
        None,
        metadata={
            "aggregate_type": "Order",
            "event_type": "Placed",
            "expected_version": "3",
            "latest_version": "4",
        },
    ),
    SchemaNotFound: Row(
        SchemaNotFound("Order", "Placed", 2), code_pb2.NOT_FOUND, "SCHEMA_NOT_FOUND", None
    ),
    Unauthenticated: Row(
        Unauthenticated("no key"), code_pb2.UNAUTHENTICATED, "UNAUTHENTICATED", None
    ),
    PermissionDenied: Row(
        PermissionDenied("alice", Operation.APPEND, "Order"),
        code_pb2.PERMISSION_DENIED,
        "PERMISSION_DENIED",
        None,
        metadata={"principal": "alice", "operation": "append", "aggregate_type": "Order"},
    ),
    GrantsChanged: Row(
        GrantsChanged("alice"),
        code_pb2.ABORTED,
        "PERMISSIONS_CHANGED",
        None,
        metadata={"principal": "alice"},
    ),
    QuotaExceeded: Row(
        QuotaExceeded("alice", "appends per second", 10, 1.5),
        code_pb2.RESOURCE_EXHAUSTED,
        "QUOTA_EXCEEDED",
        1.5,
        metadata={"principal": "alice", "quota": "appends per second"},
        details=(error_details_pb2.QuotaFailure,),
    ),
    ContentionExhausted: Row(
        ContentionExhausted("agg", 5),
        code_pb2.ABORTED,
        "CONTENTION",
        0.2,
        metadata={"aggregate_id": "agg"},
    ),
    NotYetSearchable: Row(
        NotYetSearchable(2.5, 17, datetime(2026, 1, 1, tzinfo=UTC)),
        code_pb2.DEADLINE_EXCEEDED,
        "NOT_YET_SEARCHABLE",
        1.0,
        metadata={
            "indexer_lag": "17",
            "indexed_through": "2026-01-01T00:00:00+00:00",
            "waited_s": "2.500",
        },
    ),
    StorageUnavailable: Row(
        StorageUnavailable("Cassandra: NoHostAvailable"),
        code_pb2.UNAVAILABLE,
        "BACKEND_UNAVAILABLE",
        0.2,
    ),
    NotReady: Row(NotReady(), code_pb2.UNAVAILABLE, "SERVER_STARTING", 0.2),
    ShuttingDown: Row(ShuttingDown(), code_pb2.UNAVAILABLE, "SERVER_DRAINING", 0.2),
    BackendNotConfigured: Row(
        BackendNotConfigured("queries need the search index"),
        code_pb2.UNIMPLEMENTED,
        "BACKEND_NOT_CONFIGURED",
        None,
    ),
    BackendRejected: Row(
        BackendRejected("OpenSearch: 400 parsing_exception"),
        code_pb2.INTERNAL,
        None,
        None,
        expected=False,
    ),
    PersonalDataNotConfigured: Row(
        PersonalDataNotConfigured(),
        code_pb2.FAILED_PRECONDITION,
        "PERSONAL_DATA_NOT_CONFIGURED",
        None,
        metadata={"setting": "EVENTSTORE_MASTER_KEY_FILE"},
    ),
    SubjectErased: Row(
        SubjectErased("p-1", "events[0].metadata[data_subject]"),
        code_pb2.FAILED_PRECONDITION,
        "SUBJECT_ERASED",
        None,
        metadata={"field": "events[0].metadata[data_subject]"},
    ),
    MasterKeyMissing: Row(
        MasterKeyMissing("mk-0123"),
        code_pb2.FAILED_PRECONDITION,
        "MASTER_KEY_MISSING",
        None,
        metadata={"master_key_id": "mk-0123"},
    ),
    SealBroken: Row(SealBroken("altered"), code_pb2.INTERNAL, None, None, expected=False),
}


def _unpack(status: status_pb2.Status) -> dict[type[Message], Message]:
    found: dict[type[Message], Message] = {}
    candidates: list[type[Message]] = [
        error_details_pb2.ErrorInfo,
        error_details_pb2.RetryInfo,
        error_details_pb2.RequestInfo,
        error_details_pb2.BadRequest,
        error_details_pb2.ResourceInfo,
        error_details_pb2.QuotaFailure,
        error_details_pb2.PreconditionFailure,
        pb.WrongExpectedVersion,
    ]
    for detail in status.details:
        kinds = [kind for kind in candidates if detail.Is(kind.DESCRIPTOR)]
        assert len(kinds) == 1, f"unknown detail {detail.type_url}"
        message = kinds[0]()
        detail.Unpack(message)
        found[kinds[0]] = message
    assert len(found) == len(status.details), "a detail type appears twice"
    return found


def test_every_row_of_the_table_is_tested() -> None:
    assert set(ROWS) == set(RULES)


@pytest.mark.parametrize("kind", list(ROWS), ids=lambda kind: kind.__name__)
def test_row(kind: type[BaseException]) -> None:
    row = ROWS[kind]
    status = to_status(row.error, "req-1", log_unexpected=False)
    assert status.code == row.code
    details = _unpack(status)
    request_info = details.pop(error_details_pb2.RequestInfo)
    assert isinstance(request_info, error_details_pb2.RequestInfo)
    assert request_info.request_id == "req-1"
    info = details.pop(error_details_pb2.ErrorInfo, None)
    if row.reason is None:
        assert info is None
    else:
        assert isinstance(info, error_details_pb2.ErrorInfo)
        assert (info.reason, info.domain) == (row.reason, "eventstore.v1")
        assert dict(info.metadata) == row.metadata
    retry = details.pop(error_details_pb2.RetryInfo, None)
    if row.retry_s is None:
        assert retry is None, f"{kind.__name__} must not invite a retry"
    else:
        assert isinstance(retry, error_details_pb2.RetryInfo)
        assert retry.retry_delay.ToNanoseconds() == int(row.retry_s * 1e9)
    assert set(details) == set(row.details)
    assert is_expected(row.error) is row.expected


def test_unexpected_errors_say_nothing_but_the_request_id() -> None:
    for error in (RuntimeError("password=hunter2"), BackendRejected("index hunter2 broken")):
        status = to_status(error, "req-9", log_unexpected=False)
        assert status.code == code_pb2.INTERNAL
        assert status.message == "internal error (request id req-9)"
        assert set(_unpack(status)) == {error_details_pb2.RequestInfo}
        assert not is_expected(error)


def test_the_most_specific_type_wins() -> None:
    class ColdStart(StorageUnavailable):
        pass

    assert to_status(ColdStart("x"), "r").code == code_pb2.UNAVAILABLE
    assert is_expected(ColdStart("x"))


def test_lifecycle_errors_are_not_storage_outages() -> None:
    # A draining or starting replica must not claim a backend is down, and a missing backend
    # is permanent: none of them may be caught as (or mapped like) StorageUnavailable.
    for error in (NotReady(), ShuttingDown(), BackendNotConfigured("x")):
        assert not isinstance(error, StorageUnavailable)
        assert "backend is unavailable" not in to_status(error, "r").message
    assert "another replica may serve" in to_status(ShuttingDown(), "r").message
    assert "starting" in to_status(NotReady(), "r").message
