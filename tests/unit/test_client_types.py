"""The client speaks the store's own types: no protobuf message in what it returns, and the
wire formats turn each result into a message and back unchanged."""

from __future__ import annotations

import collections.abc
import inspect
import typing
import uuid
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2

from eventstore import client
from eventstore.api.errors import to_status
from eventstore.client import (
    ClientError,
    EventStoreClient,
    ResourceExhaustedError,
    WrongExpectedVersionError,
)
from eventstore.domain.access import QuotaExceeded
from eventstore.domain.events import AggregateInfo, AppendResult, ExpectedVersion, RecordedEvent
from eventstore.domain.queries import Freshness, QueryPage, encode_consistency_token
from eventstore.domain.snapshots import Snapshot
from eventstore.v1 import eventstore_pb2 as pb
from eventstore.wire import results
from eventstore.wire.events import expected_to_proto

WHEN = datetime(2026, 11, 26, 10, 0, 0, 123456, tzinfo=UTC)


def message_types(hint: object) -> list[object]:
    """Every protobuf message class named anywhere in a type hint."""
    if isinstance(hint, type):
        return [hint] if issubclass(hint, Message) else []
    return [found for arg in typing.get_args(hint) for found in message_types(arg)]


def test_no_public_method_returns_a_protobuf_message() -> None:
    checked = 0
    for name, method in inspect.getmembers(EventStoreClient, inspect.isfunction):
        if name.startswith("_"):
            continue
        hints = typing.get_type_hints(method, vars(client))
        assert message_types(hints["return"]) == [], name
        checked += 1
    assert checked >= 10
    annotation = typing.get_type_hints(EventStoreClient.read, vars(client))["return"]
    assert typing.get_origin(annotation) is collections.abc.AsyncIterator


def test_every_public_class_and_method_is_documented() -> None:
    for name in client.__all__:
        value = getattr(client, name)
        if inspect.isclass(value) and value.__module__ == client.__name__:
            assert value.__doc__, name
    for name, method in inspect.getmembers(EventStoreClient, inspect.isfunction):
        if not name.startswith("_") or name == "__init__":
            assert method.__doc__, name


EVENT = RecordedEvent(
    event_id=uuid.uuid4(),
    aggregate_id="order-1",
    aggregate_type="Order",
    version=3,
    event_type="OrderPlaced",
    data=b'{"total":3}',
    content_type="application/json",
    metadata={"$principal": "orders"},
    recorded_at=WHEN,
)


LAST_ID = uuid.uuid4()


@pytest.mark.parametrize(
    ("value", "to_proto", "from_proto"),
    [
        (
            AppendResult(
                1,
                2,
                WHEN,
                (uuid.uuid4(), LAST_ID),
                already_committed=True,
                consistency_token=encode_consistency_token(LAST_ID),
            ),
            results.append_result_to_proto,
            results.append_result_from_proto,
        ),
        (
            AggregateInfo("order-1", "Order", 7, WHEN, WHEN),
            results.aggregate_to_proto,
            results.aggregate_from_proto,
        ),
        (
            Snapshot("order-1", 3, b"{}", "json.orders", 2, WHEN),
            results.snapshot_to_proto,
            results.snapshot_from_proto,
        ),
        (
            QueryPage([EVENT], "token", Freshness(True, 4, WHEN, WHEN), total_hits=9),
            results.query_page_to_proto,
            lambda message: results.query_page_from_proto(message, counted=True),
        ),
        (
            QueryPage([], "", Freshness()),
            results.query_page_to_proto,
            lambda message: results.query_page_from_proto(message, counted=False),
        ),
    ],
)
def test_results_survive_the_wire(
    value: object,
    to_proto: typing.Callable[[typing.Any], Message],
    from_proto: typing.Callable[[typing.Any], object],
) -> None:
    message = to_proto(value)
    decoded = type(message)()
    decoded.ParseFromString(message.SerializeToString())
    assert from_proto(decoded) == value


def conflict_status(expected: ExpectedVersion, actual: int) -> status_pb2.Status:
    detail = any_pb2.Any()
    detail.Pack(
        pb.WrongExpectedVersion(
            aggregate_id="order-1", expected=expected_to_proto(expected), actual_version=actual
        )
    )
    return status_pb2.Status(code=9, message="wrong expected version", details=[detail])


@pytest.mark.parametrize(
    "expected", [ExpectedVersion.exact(4), ExpectedVersion.no_stream(), ExpectedVersion.any()]
)
def test_a_conflict_says_what_was_expected_in_domain_terms(expected: ExpectedVersion) -> None:
    error = WrongExpectedVersionError(
        grpc.StatusCode.FAILED_PRECONDITION, "", conflict_status(expected, 6)
    )
    assert (error.aggregate_id, error.expected, error.actual_version) == ("order-1", expected, 6)
    assert isinstance(error, ClientError)
    assert not any(isinstance(value, Message) for value in vars(error).values())


def test_a_refusal_names_the_quota_or_none_when_the_server_was_full() -> None:
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    status = to_status(QuotaExceeded("alice", "max_calls_in_flight", 256, 0.1), "req-1")
    over = ResourceExhaustedError(exhausted, status.message, status)
    assert over.quota == "max_calls_in_flight"
    assert over.retry_after_s == pytest.approx(0.1)
    # gRPC's own refusal beyond EVENTSTORE_MAX_CONCURRENT_RPCS carries no details.
    assert ResourceExhaustedError(exhausted, "", None).quota is None
