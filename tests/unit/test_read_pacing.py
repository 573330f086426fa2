"""Read bytes per principal, through gRPC over the in-memory fake: a principal over its
`read_bytes_per_s` gets its whole read, paced, while another principal's reads are not slowed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import grpc
import pytest

from eventstore.access_cli import new_key
from eventstore.config import ServerSettings
from eventstore.domain.access import hash_key
from eventstore.domain.events import NewEvent
from eventstore.server import Components, RunningServer, start
from eventstore.storage.memory import InMemoryEventStorage
from eventstore.v1 import eventstore_pb2 as pb
from eventstore.v1 import eventstore_pb2_grpc as pb_grpc

SLOW, FAST = new_key(), new_key()
EVENTS, EVENT_BYTES = 30, 10_000
#: The slow principal's rate and burst: a third of the aggregate's ~300 kB.
RATE = 100_000


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[RunningServer]:
    storage = InMemoryEventStorage()
    payload = b'"' + b"x" * (EVENT_BYTES - 2) + b'"'
    events = [NewEvent(uuid4(), "Grown", payload, "application/json") for _ in range(EVENTS)]
    await storage.append("big-1", "T", 0, events, datetime.now(UTC))
    permissions = tmp_path / "permissions.yaml"
    permissions.write_text(
        "principals:\n"
        f"  slow:\n    keys: ['{hash_key(SLOW)}']\n    read: [T]\n"
        f"    quotas: {{read_bytes_per_s: {RATE}}}\n"
        f"  fast:\n    keys: ['{hash_key(FAST)}']\n    read: [T]\n"
    )
    settings = ServerSettings(
        listen="127.0.0.1:0",
        auth_disabled=False,
        permissions_file=permissions,
        read_page_size=5,
    )
    server = await start(settings, Components(storage))
    yield server
    await server.stop(grace=0)


async def read_all(stub: pb_grpc.EventStoreAsyncStub, key: str) -> tuple[int, float]:
    started = time.monotonic()
    versions: list[int] = []
    call = stub.ReadAggregate(
        pb.ReadAggregateRequest(aggregate_id="big-1"),
        metadata=[("authorization", f"Bearer {key}")],
        timeout=30,
    )
    async for message in call:
        versions.extend(event.version for event in message.events)
    assert versions == list(range(1, EVENTS + 1))
    return len(versions), time.monotonic() - started


async def test_a_principal_over_its_read_bytes_is_slowed_not_refused_and_others_are_not(
    running: RunningServer,
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = pb_grpc.EventStoreStub(channel)
        (_, slow), (_, fast) = await asyncio.gather(read_all(stub, SLOW), read_all(stub, FAST))
    # ~300 kB at 100 kB/s with a burst of 100 kB: about 2 s, and every event.
    assert slow >= 1.5
    # The other principal has the default (32 MiB/s): nothing to wait for.
    assert fast < slow
