"""Append throughput and latency against the real local stack (make bench).

Runs the server as its own process (as in production) and drives it with gRPC clients from
this one; the baseline is the same conditional batch through the storage adapter
(cassandra-driver, no gRPC) measured in the same run, so the ratio survives a noisy machine.
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from benchmarks.support import free_port
from eventstore.access_cli import new_key
from eventstore.client import Event, EventStoreClient, ExpectedVersion
from eventstore.config import CassandraSettings
from eventstore.domain.access import hash_key
from eventstore.domain.events import NewEvent
from eventstore.storage.cassandra import CassandraEventStorage, apply_schema
from eventstore.usecases.append import utc_now_ms

PAYLOAD = {"customer": "c-123", "total": 42.5, "items": [{"sku": "A-1", "qty": 2}] * 3}


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=100, method="inclusive")
    return (
        f"p50 {q[49] * 1000:6.2f} ms  p99 {q[98] * 1000:6.2f} ms  max {ordered[-1] * 1000:6.2f} ms"
    )


async def run_workers(
    workers: int, appends_each: int, append: Callable[[int, int], Awaitable[None]]
) -> tuple[float, list[float]]:
    latencies: list[float] = []

    async def worker(w: int) -> None:
        for i in range(appends_each):
            started = time.perf_counter()
            await append(w, i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(workers)))
    return time.perf_counter() - started, latencies


def report(
    name: str, workers: int, per_append: int, elapsed: float, latencies: list[float]
) -> None:
    appends = len(latencies)
    print(
        f"{name:<34} clients {workers:>3}  events/append {per_append:>3}  "
        f"{appends / elapsed:8.0f} appends/s  {appends * per_append / elapsed:8.0f} events/s  "
        f"{percentiles(latencies)}",
        flush=True,
    )


async def main(args: argparse.Namespace) -> None:
    settings = CassandraSettings(keyspace="eventstore_bench")
    await apply_schema(settings)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; Cassandra, Kafka, OpenSearch and the server "
        "on the same host; payload "
        f"{len(Event('X', PAYLOAD).payload())} B JSON",
        flush=True,
    )
    run = uuid.uuid4().hex[:8]

    # Baseline: the storage adapter alone (cassandra-driver, prepared conditional batch).
    storage = await CassandraEventStorage.connect(settings)
    try:
        for workers, per_append in ((1, 1), (16, 1)):
            heads = [0] * workers

            async def direct(
                w: int,
                i: int,
                workers: int = workers,
                per_append: int = per_append,
                heads: list[int] = heads,
            ) -> None:
                events = [
                    NewEvent(
                        uuid.uuid4(),
                        "OrderPlaced",
                        Event("X", PAYLOAD).payload(),
                        "application/json",
                    )
                    for _ in range(per_append)
                ]
                await storage.append(
                    f"direct-{run}-{workers}-{w}", "Order", heads[w], events, utc_now_ms()
                )
                heads[w] += per_append

            elapsed, lat = await run_workers(
                workers, args.appends // workers * (1 if workers == 1 else 4), direct
            )
            report("adapter only (driver, no gRPC)", workers, per_append, elapsed, lat)
    finally:
        await storage.close()

    port = free_port()
    env = {
        **os.environ,
        "EVENTSTORE_LISTEN": f"127.0.0.1:{port}",
        "EVENTSTORE_CASSANDRA_KEYSPACE": settings.keyspace,
        "EVENTSTORE_LOG_LEVEL": "WARNING",
    }
    api_key = None
    if args.auth:
        # The production path: every call authenticated, authorized and its principal recorded.
        api_key = new_key()
        permissions = Path(tempfile.mkdtemp()) / "permissions.yaml"
        permissions.write_text(
            f"principals:\n  bench:\n    keys: ['{hash_key(api_key)}']\n"
            "    append: ['*']\n    read: ['*']\n"
        )
        env["EVENTSTORE_PERMISSIONS_FILE"] = str(permissions)
    else:
        env["EVENTSTORE_AUTH_DISABLED"] = "true"
    print(f"server: authentication {'on (API key)' if args.auth else 'off'}")
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "eventstore.server", env=env
    )
    try:
        async with EventStoreClient(f"127.0.0.1:{port}", api_key=api_key) as client:
            for _ in range(100):
                try:
                    await client.append(f"warmup-{run}", "Warmup", [Event("Up", {})])
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    await asyncio.sleep(0.1)
            for workers, per_append, expected in (
                (1, 1, "exact"),
                (16, 1, "exact"),
                (16, 1, "any"),
                (16, 10, "exact"),
                (16, 100, "exact"),
            ):
                heads = [0] * workers

                async def via_grpc(
                    w: int,
                    i: int,
                    workers: int = workers,
                    per_append: int = per_append,
                    expected: str = expected,
                    heads: list[int] = heads,
                ) -> None:
                    events = [Event("OrderPlaced", PAYLOAD) for _ in range(per_append)]
                    aggregate = f"grpc-{run}-{workers}-{per_append}-{expected}-{w}"
                    exp = (
                        ExpectedVersion.exact(heads[w])
                        if expected == "exact"
                        else ExpectedVersion.any()
                    )
                    result = await client.append(aggregate, "Order", events, expected=exp)
                    heads[w] = result.last_version

                count = args.appends // workers * (1 if workers == 1 else 4)
                if per_append >= 100:
                    count = max(count // 10, 10)
                elapsed, lat = await run_workers(workers, count, via_grpc)
                report(f"gRPC append ({expected})", workers, per_append, elapsed, lat)
    finally:
        server.terminate()
        await server.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--appends", type=int, default=800, help="appends per single-client run")
    parser.add_argument(
        "--auth", action="store_true", help="server with a permissions file, clients with a key"
    )
    asyncio.run(main(parser.parse_args()))
