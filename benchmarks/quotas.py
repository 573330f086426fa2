"""A noisy principal over its quota next to a quiet one (make bench).

The server runs in its own process with a permissions file; the noisy principal floods from a
second process (several workers, ignoring retry-after: the worst neighbour) with appends, reads
(`--kind read`: GetAggregate of one aggregate, against a `requests_per_s` quota with
`--requests-quota`), subscriptions opened and held (`--kind subscribe`, against the default
bound per principal), 8 MiB appends without a credential (`--kind unauthenticated`) or
appends of one 1 MiB event (`--kind bytes`, against the principal's bytes quota: its own with
`--bytes-quota`, else the server's default), and this process measures the quiet principal's
single-event appends before and during the flood. Quotas left at 0 are the server's defaults
(EVENTSTORE_LIMIT_DEFAULT_*). Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

from benchmarks.support import free_port
from eventstore.access_cli import new_key
from eventstore.client import (
    ClientError,
    Event,
    EventStoreClient,
    ResourceExhaustedError,
    RetryPolicy,
)
from eventstore.config import CassandraSettings
from eventstore.domain.access import hash_key
from eventstore.storage.cassandra import apply_schema

KEYSPACE = "eventstore_bench"


def summary(samples: list[float]) -> str:
    q = statistics.quantiles(sorted(samples), n=100, method="inclusive")
    return f"p50 {q[49] * 1000:6.2f} ms  p99 {q[98] * 1000:6.2f} ms  (n={len(samples)})"


async def quiet(address: str, key: str, count: int) -> str:
    """The quiet principal's latencies, and how many of its appends failed (none should)."""
    latencies: list[float] = []
    failed: list[str] = []
    async with EventStoreClient(address, api_key=key, retry=RetryPolicy(attempts=1)) as client:
        for i in range(count):
            started = time.perf_counter()
            try:
                await client.append(f"quiet-{os.getpid()}-{i % 10}", "Order", [Event("Placed", {})])
            except ClientError as exc:
                failed.append(exc.code.name)
                continue
            latencies.append(time.perf_counter() - started)
    return f"{summary(latencies)}, {len(failed)} failed {sorted(set(failed))}"


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


async def flood(address: str, key: str, workers: int, seconds: float, kind: str) -> None:
    admitted = refused = failed = 0
    deadline = time.monotonic() + seconds

    held: list[asyncio.Task[None]] = []
    large = b"x" * (1024 * 1024 - 64)  # within EVENTSTORE_LIMIT_MAX_EVENT_BYTES
    unauthenticated = b"\x0a\x01x" + b"\x22" + _varint(8 * 1024 * 1024) + b"x" * (8 * 1024 * 1024)

    async def hold(client: EventStoreClient, opened: asyncio.Event) -> None:
        async for _ in client.subscribe(aggregate_types=["Payment"]):
            opened.set()  # and keep it open, reading what comes

    async def worker(w: int, client: EventStoreClient) -> None:
        nonlocal admitted, refused, failed
        while time.monotonic() < deadline:
            try:
                if kind == "read":
                    await client.get_aggregate(f"noisy-{os.getpid()}-read")
                elif kind == "subscribe":
                    opened = asyncio.Event()
                    task = asyncio.create_task(hold(client, opened))
                    waiting = asyncio.create_task(opened.wait())
                    await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
                    waiting.cancel()
                    if task.done():
                        task.result()  # raises the refusal
                    held.append(task)
                elif kind == "unauthenticated":
                    try:
                        await raw_append(unauthenticated, timeout=30)
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                            raise
                        refused += 1
                        continue
                else:
                    aggregate = f"noisy-{os.getpid()}-{w}"
                    event = (
                        Event("Paid", large, content_type="application/octet-stream")
                        if kind == "bytes"
                        else Event("Paid", {})
                    )
                    await client.append(aggregate, "Payment", [event])
                admitted += 1
            except ResourceExhaustedError:
                refused += 1
                await asyncio.sleep(0.01 if kind == "subscribe" else 0)
            except ClientError:  # e.g. UNAVAILABLE: the backends did not keep up
                failed += 1

    big = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    async with (
        EventStoreClient(address, api_key=key, retry=RetryPolicy(attempts=1)) as client,
        grpc.aio.insecure_channel(address, options=big) as channel,
    ):
        raw_append = channel.unary_unary(
            "/eventstore.v1.EventStore/Append", request_serializer=None, response_deserializer=None
        )
        if kind == "read":  # something to read (retried past the quota: it is not the flood)
            async with EventStoreClient(address, api_key=key) as patient:
                await patient.append(f"noisy-{os.getpid()}-read", "Payment", [Event("Paid", {})])
        await asyncio.gather(*(worker(w, client) for w in range(workers)))
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
    print(
        f"noisy principal, {workers} workers for {seconds:.0f} s: "
        f"{admitted} admitted ({admitted / seconds:.0f}/s), {refused} refused "
        f"({refused / seconds:.0f}/s), {failed} failed otherwise",
        flush=True,
    )


async def main(args: argparse.Namespace) -> None:
    if args.flood:
        key = os.environ["BENCH_NOISY_KEY"]
        await flood(args.flood, key, args.workers, args.seconds, args.kind)
        return
    await apply_schema(CassandraSettings(keyspace=KEYSPACE))
    quiet_key, noisy_key = new_key(), new_key()
    permissions = Path(tempfile.mkdtemp()) / "permissions.yaml"
    quotas = {
        "append_events_per_s": args.quota,
        "requests_per_s": args.requests_quota,
        "append_bytes_per_s": args.bytes_quota,
    }
    chosen = ", ".join(f"{name}: {value}" for name, value in quotas.items() if value)
    permissions.write_text(
        "principals:\n"
        f"  quiet:\n    keys: ['{hash_key(quiet_key)}']\n    append: [Order]\n"
        f"  noisy:\n    keys: ['{hash_key(noisy_key)}']\n"
        "    append: [Payment]\n    read: [Payment]\n    subscribe: [Payment]\n"
        + (f"    quotas: {{{chosen}}}\n" if chosen else "")
    )
    print(
        f"noisy principal floods with {args.kind}; quotas: {chosen or 'none'} "
        "(and the server's defaults for the others)",
        flush=True,
    )
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {
        **os.environ,
        "EVENTSTORE_LISTEN": address,
        "EVENTSTORE_CASSANDRA_KEYSPACE": KEYSPACE,
        "EVENTSTORE_LOG_LEVEL": "WARNING",
        "EVENTSTORE_PERMISSIONS_FILE": str(permissions),
    }
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "eventstore.server", env=env
    )
    try:
        async with EventStoreClient(address, api_key=quiet_key) as client:
            for _ in range(100):
                try:
                    await client.append("warmup", "Order", [Event("Up", {})])
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    await asyncio.sleep(0.1)
        print(f"quiet principal alone:         {await quiet(address, quiet_key, 500)}")
        noisy = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.quotas",
            "--flood",
            address,
            "--workers",
            str(args.workers),
            "--seconds",
            str(args.seconds),
            "--kind",
            args.kind,
            env={**os.environ, "BENCH_NOISY_KEY": noisy_key},
        )
        await asyncio.sleep(1.0)  # the flood is under way
        print(f"quiet principal during flood:  {await quiet(address, quiet_key, 500)}")
        await noisy.wait()
    finally:
        server.terminate()
        await server.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flood", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--quota", type=int, default=100, help="noisy principal's events/s (0: none)"
    )
    parser.add_argument(
        "--kind",
        choices=["append", "read", "subscribe", "unauthenticated", "bytes"],
        default="append",
    )
    parser.add_argument(
        "--requests-quota",
        type=int,
        default=0,
        help="noisy principal's calls/s (0: the server's default)",
    )
    parser.add_argument(
        "--bytes-quota",
        type=int,
        default=0,
        help="noisy principal's appended bytes/s (0: the server's default)",
    )
    asyncio.run(main(parser.parse_args()))
