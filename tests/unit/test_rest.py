"""The REST/JSON face without a server: routes from the proto's google.api.http options, HTTP
requests into messages, gRPC statuses into HTTP answers, and the checked-in OpenAPI document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api import http_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from eventstore.api.errors import to_status
from eventstore.domain.access import QuotaExceeded, Unauthenticated
from eventstore.domain.errors import InvalidArgument, WrongExpectedVersion
from eventstore.domain.events import ExpectedVersion
from eventstore.rest import openapi
from eventstore.rest.gateway import _timeout
from eventstore.rest.messages import BadInput, request_from, to_json
from eventstore.rest.routes import Route, UnsupportedRule, _route, routes
from eventstore.rest.status import (
    HTTP_STATUS,
    bad_request,
    error_body,
    http_status,
    retry_after,
    status_of,
)
from eventstore.v1 import eventstore_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
SERVICE = pb.DESCRIPTOR.services_by_name["EventStore"]
METHODS = SERVICE.methods_by_name


def route(name: str) -> Route:
    (found,) = [r for r in routes(SERVICE) if r.name == name]
    return found


def test_routes_are_the_annotations_of_the_proto() -> None:
    table = {(r.method, r.template, r.body, r.name) for r in routes(SERVICE)}
    assert table == {
        ("POST", "/v1/aggregates/{aggregate_id}/events", "*", "Append"),
        ("GET", "/v1/aggregates/{aggregate_id}/events", "", "ReadAggregate"),
        ("GET", "/v1/aggregates/{aggregate_id}", "", "GetAggregate"),
        ("GET", "/v1/events:subscribe", "", "Subscribe"),
        ("GET", "/v1/events", "", "QueryEvents"),
        ("POST", "/v1/aggregates/{aggregate_id}/snapshots", "*", "SaveSnapshot"),
        ("GET", "/v1/aggregates/{aggregate_id}/snapshot", "", "GetSnapshot"),
        ("GET", "/v1/groups/{group}/parked", "", "ListParked"),
        ("POST", "/v1/groups/{group}/parked:replay", "*", "ReplayParked"),
        ("POST", "/v1/subjects:erase", "*", "EraseSubject"),
        ("POST", "/v1/schemas/{aggregate_type}/{event_type}", "*", "RegisterSchema"),
        ("GET", "/v1/schemas/{aggregate_type}", "", "ListSchemas"),
        ("GET", "/v1/schemas/{aggregate_type}/{event_type}", "", "GetSchema"),
    }
    assert route("Append").grpc_path == "/eventstore.v1.EventStore/Append"
    assert route("Append").path_fields == ("aggregate_id",)
    assert route("Subscribe").streaming
    assert not route("GetAggregate").streaming


@pytest.mark.parametrize(
    ("method", "rule", "why"),
    [
        ("Append", http_pb2.HttpRule(post="/v1/{aggregate_id}", body="events"), "body"),
        ("Append", http_pb2.HttpRule(post="/v1/{nothing}"), "path variable"),
        ("Append", http_pb2.HttpRule(post="/v1/{events}"), "path variable"),
        ("Append", http_pb2.HttpRule(post="/v1/{aggregate_id=**}"), "path segment"),
        ("Append", http_pb2.HttpRule(post="/v1/a:b/c"), "path segment"),
        ("Append", http_pb2.HttpRule(get="/v1/x", body="*"), "takes no body"),
        ("Append", http_pb2.HttpRule(post="/v1/x", response_body="events"), "response_body"),
        ("Append", http_pb2.HttpRule(post="v1/x"), "must start with /"),
        ("SubscribeGroup", http_pb2.HttpRule(get="/v1/groups"), "client-streaming"),
    ],
)
def test_rules_outside_what_is_served_stop_the_start(
    method: str, rule: http_pb2.HttpRule, why: str
) -> None:
    with pytest.raises(UnsupportedRule, match=why):
        _route(METHODS[method], rule)


def test_path_query_and_body_make_the_request() -> None:
    body = (
        b'{"aggregateType": "Order", "expected_version": {"exact": "7"},'
        b' "events": [{"data": "eyJhIjoxfQ=="}]}'
    )
    message = request_from(route("Append"), {"aggregate_id": "o-1"}, [], body)
    assert message == pb.AppendRequest(
        aggregate_id="o-1",
        aggregate_type="Order",
        expected_version=pb.ExpectedVersion(exact=7),
        events=[pb.EventData(data=b'{"a":1}')],
    )
    query = [
        ("event_types", "A"),
        ("eventTypes", "B"),
        ("page_size", "5"),
        ("count_total", "true"),
        ("from", "2024-01-02T03:04:05Z"),
    ]
    found = request_from(route("QueryEvents"), {}, query, None)
    assert isinstance(found, pb.QueryEventsRequest)
    assert (list(found.event_types), found.page_size, found.count_total) == (["A", "B"], 5, True)
    assert found.HasField("from")
    assert getattr(found, "from").seconds == 1704164645
    subscribe = request_from(route("Subscribe"), {}, [("from_end", "")], None)
    assert isinstance(subscribe, pb.SubscribeRequest)
    assert subscribe.WhichOneof("start") == "from_end"
    unset = request_from(route("Subscribe"), {}, [("from_end", "false")], None)
    assert isinstance(unset, pb.SubscribeRequest)
    assert unset.WhichOneof("start") is None


@pytest.mark.parametrize(
    ("name", "query", "body", "field"),
    [
        ("Append", [], b"{", ""),
        ("Append", [], b'"a string"', ""),
        ("Append", [], b'{"colour": 1}', "colour"),
        ("Append", [], b'{"events": [{}, {"colour": 1}]}', "events[1].colour"),
        ("Append", [], b'{"events": [{"data": "not base64!"}]}', "events[0].data"),
        ("Append", [], b'{"expectedVersion": {"exact": "seven"}}', "expected_version.exact"),
        ("Append", [], b'{"aggregateId": "o-2"}', "aggregate_id"),
        ("Append", [], b'{"events": [{}, {"eventType": 5}]}', "events[1].event_type"),
        ("Append", [], b'{"events": {"eventType": "A"}}', "events"),
        ("Append", [], b'{"events": [{"metadata": {"k": 1}}]}', "events[0].metadata"),
        ("Append", [], b'{"aggregate_type": ["A"]}', "aggregate_type"),
        ("Append", [("x", "1")], b"{}", "x"),
        ("ReadAggregate", [("max_count", "all")], None, "max_count"),
        ("ReadAggregate", [("colour", "red")], None, "colour"),
        ("QueryEvents", [("page_size", "1"), ("page_size", "2")], None, "page_size"),
        ("QueryEvents", [("count_total", "maybe")], None, "count_total"),
        ("QueryEvents", [("from.seconds", "1")], None, "from"),
        ("Subscribe", [("from_end", "perhaps")], None, "from_end"),
    ],
)
def test_bad_input_names_the_field(
    name: str, query: list[tuple[str, str]], body: bytes | None, field: str
) -> None:
    with pytest.raises(BadInput) as caught:
        request_from(
            route(name), {"aggregate_id": "o-1"} if "{" in route(name).template else {}, query, body
        )
    assert caught.value.field == field


def test_responses_are_proto3_json_with_every_field() -> None:
    shown = to_json(pb.AppendResponse(first_version=1, last_version=2))
    assert shown["firstVersion"] == "1"  # int64 as a string
    assert shown["alreadyCommitted"] is False  # unset fields shown too
    assert to_json(pb.Snapshot(state=b"\x00\xff"))["state"] == "AP8="


def detail(status: status_pb2.Status, kind: type[Message]) -> Any:
    for holder in status.details:
        if holder.Is(kind.DESCRIPTOR):
            found = kind()
            holder.Unpack(found)
            return found
    return None


@pytest.mark.parametrize(
    ("code", "http"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.FAILED_PRECONDITION, 400),
        (grpc.StatusCode.UNAUTHENTICATED, 401),
        (grpc.StatusCode.PERMISSION_DENIED, 403),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.ALREADY_EXISTS, 409),
        (grpc.StatusCode.ABORTED, 409),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (grpc.StatusCode.CANCELLED, 499),
        (grpc.StatusCode.INTERNAL, 500),
        (grpc.StatusCode.UNKNOWN, 500),
        (grpc.StatusCode.UNIMPLEMENTED, 501),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    ],
)
def test_grpc_codes_map_as_google_documents(code: grpc.StatusCode, http: int) -> None:
    # gRPC's own statuses (no details trailer) too: a transport failure, a deadline.
    status = status_of(code, "message", ())
    assert http_status(status) == http
    answer, headers, body = error_body(status)
    assert (answer, body["code"], body["status"], body["message"]) == (
        http,
        http,
        code.name,
        "message",
    )
    assert headers == {}


def test_every_code_has_a_status() -> None:
    assert set(HTTP_STATUS) == set(code_pb2.Code.values())


def test_a_version_conflict_is_409_with_its_details_as_json() -> None:
    exc = WrongExpectedVersion("o-1", ExpectedVersion.exact(2), 3)
    trailers = (("grpc-status-details-bin", to_status(exc, "r-1").SerializeToString()),)
    status = status_of(grpc.StatusCode.FAILED_PRECONDITION, "ignored", trailers)
    http, headers, body = error_body(status)
    assert (http, body["status"]) == (409, "FAILED_PRECONDITION")
    types = {d["@type"].rsplit("/", 1)[1]: d for d in body["details"]}
    assert types["google.rpc.ErrorInfo"]["reason"] == "WRONG_EXPECTED_VERSION"
    conflict = types["eventstore.v1.WrongExpectedVersion"]
    assert (conflict["aggregateId"], conflict["actualVersion"]) == ("o-1", "3")
    assert conflict["expected"] == {"exact": "2"}
    assert types["google.rpc.RequestInfo"]["requestId"] == "r-1"
    assert "Retry-After" not in headers


def test_quota_is_429_with_retry_after_in_whole_seconds() -> None:
    status = to_status(QuotaExceeded("payments", "append_events_per_s", 20, 2.05), "r")
    http, headers, _ = error_body(status)
    assert (http, headers["Retry-After"]) == (429, "3")
    # Below a second still waits one (Retry-After has no fractions).
    assert retry_after(to_status(QuotaExceeded("p", "q", 20, 0.05), "r")) == 1


def test_retry_after_comes_only_from_retry_info() -> None:
    assert retry_after(to_status(Unauthenticated("no key"), "r")) is None
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE)
    holder = any_pb2.Any()
    holder.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=4)))
    status.details.append(holder)
    assert error_body(status)[1] == {"Retry-After": "4"}


def test_invalid_arguments_name_their_fields_like_the_servers() -> None:
    server = to_status(InvalidArgument.of("events[0].data", "not JSON"), "r")
    local = bad_request("events[0].data", "not base64")
    for status in (server, local):
        http, _, body = error_body(status)
        assert (http, body["status"]) == (400, "INVALID_ARGUMENT")
        violations = detail(status, error_details_pb2.BadRequest).field_violations
        assert [v.field for v in violations] == ["events[0].data"]
        assert detail(status, error_details_pb2.ErrorInfo).reason == "INVALID_ARGUMENT"


def test_a_details_trailer_of_another_status_is_not_believed() -> None:
    other = status_pb2.Status(code=code_pb2.NOT_FOUND, message="other")
    status = status_of(
        grpc.StatusCode.UNAVAILABLE,
        "down",
        (("grpc-status-details-bin", other.SerializeToString()),),
    )
    assert (status.code, status.message) == (code_pb2.UNAVAILABLE, "down")


def test_the_checked_in_openapi_document_is_what_the_proto_generates() -> None:
    checked_in = (ROOT / "docs/openapi.json").read_text()
    assert checked_in == openapi.render(SERVICE), "run `make openapi` and commit docs/openapi.json"


def test_the_openapi_document_covers_every_route() -> None:
    document = openapi.document(SERVICE)
    operations = {
        operation["operationId"]: (method.upper(), path)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }
    assert operations == {r.name: (r.method, r.template) for r in routes(SERVICE)}
    query = document["paths"]["/v1/events"]["get"]["parameters"]
    assert {"event_types", "from", "page_size", "count_total"} <= {p["name"] for p in query}
    schemas = document["components"]["schemas"]
    assert schemas["AppendResponse"]["properties"]["firstVersion"] == {
        "type": "string",
        "format": "int64",
    }
    assert schemas["EventData"]["properties"]["data"] == {"type": "string", "format": "byte"}


def test_grpc_timeout_header_is_the_calls_deadline() -> None:
    assert _timeout(None) is None
    assert _timeout("5S") == 5.0
    assert _timeout("250m") == 0.25
    assert _timeout("2M") == 120.0
    for bad in ("", "S", "5", "5s", "-1S", "123456789S", "1.5S"):
        with pytest.raises(ValueError, match="gRPC timeout"):
            _timeout(bad)
