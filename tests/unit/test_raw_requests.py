"""Every RPC, health included, answers raw and mutated request bytes with an allowed status
(tests/raw_requests.py) and keeps serving: an in-process server over in-memory fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from hypothesis import given, settings

from eventstore import metrics
from tests.fakes import in_memory_server
from tests.raw_requests import RPCS, call, check, raw_requests


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    async with in_memory_server() as channel:
        # The seeds name an aggregate with events (a snapshot needs its version to exist).
        assert await call(channel, RPCS["Append"], RPCS["Append"].seeds[0]) == grpc.StatusCode.OK
        yield channel


def _test_for(name: str) -> object:
    rpc = RPCS[name]

    @settings(max_examples=100)
    @given(request=raw_requests(rpc))
    async def test(channel: grpc.aio.Channel, request: bytes) -> None:
        await check(channel, rpc, request)

    test.__name__ = f"test_raw_{name.replace('.', '_')}_requests_get_allowed_answers"
    return test


for _name in RPCS:
    _test = _test_for(_name)
    globals()[_test.__name__] = _test  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", list(RPCS))
async def test_undecodable_bytes_are_invalid_argument(channel: grpc.aio.Channel, name: str) -> None:
    rpc = RPCS[name]
    counted = metrics.RPC_REQUESTS.labels(name, "INVALID_ARGUMENT")
    before = counted._value.get()
    # A string field (1, length 1) holding a byte that is not UTF-8: does not decode.
    assert await call(channel, rpc, b"\x0a\x01\xff") == grpc.StatusCode.INVALID_ARGUMENT
    if rpc.path.startswith("/eventstore."):
        assert counted._value.get() == before + 1, "refusals are counted like any other"


@pytest.mark.parametrize("name", ["Append", "GetAggregate", "ReadAggregate"])
async def test_answers_are_counted_with_their_code_before_they_leave(
    channel: grpc.aio.Channel, name: str
) -> None:
    rpc = RPCS[name]
    counters = {code: metrics.RPC_REQUESTS.labels(name, code) for code in ("OK", "CANCELLED")}
    before = {code: counter._value.get() for code, counter in counters.items()}
    if rpc.streaming:
        # To its end: `call` stops at the first message, before the server has finished (and
        # counted) the stream, which made this flaky once the stream took a few more steps.
        stream = channel.unary_stream(rpc.path, None, None)(rpc.seeds[0], timeout=10)
        async for _ in stream:
            pass
        assert await stream.code() == grpc.StatusCode.OK
    else:
        assert await call(channel, rpc, rpc.seeds[0]) == grpc.StatusCode.OK
    after = {code: counter._value.get() for code, counter in counters.items()}
    assert after == {"OK": before["OK"] + 1, "CANCELLED": before["CANCELLED"]}
