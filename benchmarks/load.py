"""One workload: what it is, the loops that drive it (the adapter's or the server's) and its
measurement."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from benchmarks.figures import Result, latency_ms
from benchmarks.support import PAYLOAD, Watched, cpu_ms_per_append, cpu_snapshot
from eventstore.client import Event, EventStoreClient, ExpectedVersion
from eventstore.domain.events import NewEvent
from eventstore.ports import Rejected
from eventstore.storage.cassandra import CassandraEventStorage
from eventstore.usecases.append import utc_now_ms

Append = Callable[[int], Awaitable[None]]


@dataclass(frozen=True)
class Spec:
    phase: str
    clients: int
    batch: int
    expected: str = "exact"

    @property
    def aggregate_type(self) -> str:
        """Each server workload has its own type, so its own topic: counts per workload."""
        return f"Bench{self.clients}x{self.batch}{self.expected.title()}{self.phase.title()}"


async def drive(clients: int, seconds: float, append: Append) -> tuple[float, list[float], int]:
    """`clients` loops of `append` for `seconds`: elapsed time, the latency of each append that
    succeeded, and how many failed (counted; the load goes on)."""
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds

    async def loop(w: int) -> None:
        nonlocal errors
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                await append(w)
            except Exception:  # noqa: BLE001 - counted and reported
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(loop(w) for w in range(clients)))
    return time.perf_counter() - started, latencies, errors


async def measure(
    path: str, spec: Spec, seconds: float, warmup: float, watched: list[Watched], append: Append
) -> tuple[Result, int]:
    """The workload's figures, and the events committed in all (warm-up included)."""
    _, warm, _ = await drive(spec.clients, warmup, append)
    before = cpu_snapshot(watched)
    elapsed, latencies, errors = await drive(spec.clients, seconds, append)
    after = cpu_snapshot(watched)
    result = Result(
        path=path,
        phase=spec.phase,
        clients=spec.clients,
        batch=spec.batch,
        expected=spec.expected,
        seconds=elapsed,
        appends=len(latencies),
        errors=errors,
        latency_ms=latency_ms(latencies),
        cpu_ms_per_append=cpu_ms_per_append(before, after, len(latencies)),
    )
    return result, (len(warm) + len(latencies)) * spec.batch


def adapter_loop(storage: CassandraEventStorage, spec: Spec) -> Append:
    payload = Event("X", PAYLOAD).payload()
    heads, generation = [0] * spec.clients, [0] * spec.clients

    async def append(w: int) -> None:
        events = [
            NewEvent(uuid.uuid4(), "OrderPlaced", payload, "application/json")
            for _ in range(spec.batch)
        ]
        aggregate = f"adapter-{spec.aggregate_type}-{w}-{generation[w]}"
        outcome = await storage.append(
            aggregate, spec.aggregate_type, heads[w], events, utc_now_ms()
        )
        if isinstance(outcome, Rejected):
            generation[w], heads[w] = generation[w] + 1, 0  # go on with a fresh aggregate
            raise RuntimeError(f"rejected: {outcome}")
        heads[w] += spec.batch

    return append


def server_loop(clients: Sequence[EventStoreClient], spec: Spec) -> Append:
    """Client loop w appends over connection w mod len(clients)."""
    heads, generation = [0] * spec.clients, [0] * spec.clients

    async def append(w: int) -> None:
        client = clients[w % len(clients)]
        events = [Event("OrderPlaced", PAYLOAD) for _ in range(spec.batch)]
        expected = (
            ExpectedVersion.exact(heads[w]) if spec.expected == "exact" else ExpectedVersion.any()
        )
        try:
            result = await client.append(
                f"{spec.aggregate_type}-{w}-{generation[w]}",
                spec.aggregate_type,
                events,
                expected=expected,
            )
        except Exception:
            # Its outcome may be unknown: go on with a fresh aggregate, whatever it was.
            generation[w], heads[w] = generation[w] + 1, 0
            raise
        heads[w] = result.last_version

    return append
