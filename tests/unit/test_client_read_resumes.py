"""The client's ReadAggregate survives a retryable failure mid-stream: it asks again from the
version after the last one it yielded, so every event is yielded once and in order, in both
directions and within `max_count`; a failure that is not retryable is raised at once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from eventstore.client import ClientError, EventStoreClient, RetryPolicy, UnavailableError
from eventstore.domain.events import RecordedEvent
from eventstore.v1 import eventstore_pb2 as pb
from eventstore.wire.events import event_to_proto

EVENTS = 10


def recorded(version: int) -> RecordedEvent:
    return RecordedEvent(
        event_id=uuid.uuid4(),
        aggregate_id="a",
        aggregate_type="T",
        version=version,
        event_type="E",
        data=b"{}",
        content_type="application/json",
        metadata={},
        recorded_at=datetime.now(UTC),
    )


class Flaky:
    """Serves versions 1..EVENTS one per page; the first `failures` calls fail with `code`
    after `after` events."""

    def __init__(self, failures: int, after: int, code: grpc.StatusCode) -> None:
        self.events = [recorded(v) for v in range(1, EVENTS + 1)]
        self.failures = failures
        self.after = after
        self.code = code
        self.requests: list[tuple[int, int]] = []

    async def ReadAggregate(
        self, request: pb.ReadAggregateRequest, context: Any
    ) -> AsyncIterator[pb.ReadAggregateResponse]:
        self.requests.append((request.from_version, request.max_count))
        backwards = request.direction == pb.DIRECTION_BACKWARDS
        events = list(reversed(self.events)) if backwards else self.events
        if request.from_version:
            events = [
                e
                for e in events
                if (
                    e.version <= request.from_version
                    if backwards
                    else e.version >= request.from_version
                )
            ]
        if request.max_count:
            events = events[: request.max_count]
        for n, event in enumerate(events):
            if self.failures and n == self.after:
                self.failures -= 1
                await context.abort(self.code, "flaky")
            yield pb.ReadAggregateResponse(events=[event_to_proto(event)])


async def read(servicer: Flaky, **kwargs: Any) -> list[int]:
    server = grpc.aio.server()
    # Only ReadAggregate, registered by hand (the generated servicer is abstract).
    handler = grpc.unary_stream_rpc_method_handler(
        servicer.ReadAggregate,
        request_deserializer=pb.ReadAggregateRequest.FromString,
        response_serializer=pb.ReadAggregateResponse.SerializeToString,
    )
    service = pb.DESCRIPTOR.services_by_name["EventStore"].full_name
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, {"ReadAggregate": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        retry = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)
        async with EventStoreClient(f"127.0.0.1:{port}", retry=retry) as client:
            return [e.version for e in await client.read_all("a", **kwargs)]
    finally:
        await server.stop(0)


async def test_a_forward_read_resumes_after_the_last_event_yielded() -> None:
    servicer = Flaky(failures=2, after=3, code=grpc.StatusCode.UNAVAILABLE)
    assert await read(servicer) == list(range(1, EVENTS + 1))
    # Progress between failures resets the tries: two failures, each after 3 new events.
    assert servicer.requests == [(0, 0), (4, 0), (7, 0)]


async def test_a_backward_read_with_a_max_count_resumes_within_it() -> None:
    servicer = Flaky(failures=1, after=2, code=grpc.StatusCode.CANCELLED)
    assert await read(servicer, backwards=True, max_count=5) == [10, 9, 8, 7, 6]
    assert servicer.requests == [(0, 5), (8, 3)]


async def test_a_failure_before_the_first_event_is_retried_from_the_start() -> None:
    servicer = Flaky(failures=1, after=0, code=grpc.StatusCode.UNAVAILABLE)
    assert await read(servicer, backwards=True) == list(range(EVENTS, 0, -1))
    assert servicer.requests == [(0, 0), (0, 0)]


async def test_retries_without_progress_end_and_other_failures_are_raised_at_once() -> None:
    with pytest.raises(UnavailableError):
        await read(Flaky(failures=5, after=0, code=grpc.StatusCode.UNAVAILABLE))
    servicer = Flaky(failures=1, after=2, code=grpc.StatusCode.NOT_FOUND)
    with pytest.raises(ClientError) as refused:
        await read(servicer)
    assert refused.value.code == grpc.StatusCode.NOT_FOUND
    assert len(servicer.requests) == 1
