"""What idle subscriptions cost the server (make bench).

Starts a server in its own process (authentication off, subscription bounds raised), opens N
subscriptions from a second process that only holds them (wide ones on an aggregate type, from
the end, and one-aggregate ones, half each), then measures the server's threads, open file
descriptors and CPU over 10 idle seconds, and a quiet client's single-event appends meanwhile.
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

from benchmarks.support import free_port
from eventstore.client import Event, EventStoreClient
from eventstore.config import CassandraSettings
from eventstore.storage.cassandra import apply_schema

KEYSPACE = "eventstore_bench"
STREAMS_PER_CLIENT = 50


def process_stats(pid: int) -> tuple[int, int, float]:
    """Threads, open file descriptors, CPU seconds (user + system) so far."""
    proc = Path(f"/proc/{pid}")
    threads = len(list((proc / "task").iterdir()))
    fds = len(list((proc / "fd").iterdir()))
    fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return threads, fds, cpu


async def hold(address: str, count: int) -> None:
    """Open `count` subscriptions, say so on stdout, and keep them until killed."""
    opened = 0
    ready = asyncio.Event()

    async def one(client: EventStoreClient, n: int) -> None:
        nonlocal opened
        if n % 2:
            stream = client.subscribe(aggregate_id=f"idle-{n}", aggregate_types=["Idle"])
        else:
            stream = client.subscribe(aggregate_types=["Idle"], start="end")
        async for message in stream:
            if message.caught_up:
                opened += 1
                if opened == count:
                    ready.set()

    clients = [
        EventStoreClient(address)
        for _ in range((count + STREAMS_PER_CLIENT - 1) // STREAMS_PER_CLIENT)
    ]
    for client in clients:
        await client.__aenter__()
    tasks = [asyncio.create_task(one(clients[n // STREAMS_PER_CLIENT], n)) for n in range(count)]
    if count:
        await ready.wait()
    print("held", flush=True)
    await asyncio.gather(*tasks)


async def quiet(address: str, count: int) -> list[float]:
    latencies = []
    async with EventStoreClient(address) as client:
        for i in range(count):
            started = time.perf_counter()
            await client.append(f"quiet-{os.getpid()}-{i % 10}", "Order", [Event("Placed", {})])
            latencies.append(time.perf_counter() - started)
    return latencies


async def measure(streams: int, appends: int) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {
        **os.environ,
        "EVENTSTORE_LISTEN": address,
        "EVENTSTORE_CASSANDRA_KEYSPACE": KEYSPACE,
        "EVENTSTORE_KAFKA_TOPIC_PREFIX": f"bench-{uuid.uuid4().hex[:8]}.",
        "EVENTSTORE_LOG_LEVEL": "WARNING",
        "EVENTSTORE_AUTH_DISABLED": "true",
        "EVENTSTORE_LIMIT_MAX_SUBSCRIPTIONS": str(max(streams, 1)),
        "EVENTSTORE_LIMIT_MAX_SUBSCRIPTIONS_PER_PRINCIPAL": str(max(streams, 1)),
    }
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "eventstore.server", env=env
    )
    holder = None
    try:
        async with EventStoreClient(address) as client:
            for attempt in range(200):
                try:
                    await client.append("warmup", "Order", [Event("Up", {})])
                    await client.append("warmup-idle", "Idle", [Event("Up", {})])
                    break
                except Exception:
                    if attempt == 199 or server.returncode is not None:
                        raise
                    await asyncio.sleep(0.1)
        holder = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.subscriptions",
            "--hold",
            address,
            "--streams",
            str(streams),
            stdout=asyncio.subprocess.PIPE,
        )
        assert holder.stdout is not None
        await holder.stdout.readline()
        await asyncio.sleep(3)  # let opening settle
        threads, fds, cpu_before = process_stats(server.pid)
        await asyncio.sleep(10)
        _, _, cpu_after = process_stats(server.pid)
        idle_cpu = (cpu_after - cpu_before) / 10
        latencies = sorted(await quiet(address, appends))
        q = statistics.quantiles(latencies, n=100, method="inclusive")
        print(
            f"{streams:4} idle streams: threads {threads:4}  fds {fds:4}  "
            f"idle CPU {idle_cpu * 100:5.1f} % of a core  "
            f"quiet append p50 {q[49] * 1000:6.2f} ms  p99 {q[98] * 1000:6.2f} ms",
            flush=True,
        )
    finally:
        if holder is not None and holder.returncode is None:
            holder.kill()
            await holder.wait()
        server.terminate()
        await server.wait()


async def main(args: argparse.Namespace) -> None:
    if args.hold:
        await hold(args.hold, args.streams)
        return
    await apply_schema(CassandraSettings(keyspace=KEYSPACE))
    for streams in args.counts:
        await measure(streams, args.appends)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hold", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--streams", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--counts", type=int, nargs="+", default=[0, 100, 500])
    parser.add_argument("--appends", type=int, default=500)
    asyncio.run(main(parser.parse_args()))
