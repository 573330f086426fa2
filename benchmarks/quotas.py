"""A noisy principal over its quota next to a quiet one (make bench).

The server runs in its own process with a permissions file; the noisy principal floods from a
second process (several workers, ignoring retry-after: the worst neighbour) with appends, reads
(`--kind read`: GetAggregate of one aggregate, against a `requests_per_s` quota with
`--requests-quota`), subscriptions opened and held (`--kind subscribe`, against the default
bound per principal), 8 MiB appends without a credential (`--kind unauthenticated`),
appends of one 1 MiB event (`--kind bytes`, against the principal's bytes quota: its own with
`--bytes-quota`, else the server's default), reads of a long aggregate opened in bursts and
left unread (`--kind inflight`, against the default `max_calls_in_flight`), appends of one
event of 200,000 metadata entries (`--kind metadata`, refused before decoding by
EVENTSTORE_LIMIT_MAX_METADATA_ENTRIES) or appends of 1,000 tiny events (`--kind events`,
against the default events quota with `--quota 0`), and this process measures the quiet
principal's single-event appends before and during the flood (once the flood's set-up, such
as writing the aggregate it reads, is done). Quotas left at 0 are the server's defaults
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
from collections import Counter
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
from eventstore.v1 import eventstore_pb2 as pb

KEYSPACE = "eventstore_bench"
#: What the flood process prints once its set-up is done and its workers start.
FLOODING = "flooding"
#: Reads each `inflight` worker opens at once (8 workers: as many as the default bound).
INFLIGHT_BURST = 32


def summary(samples: list[float]) -> str:
    q = statistics.quantiles(sorted(samples), n=100, method="inclusive")
    return (
        f"p50 {q[49] * 1000:6.2f} ms  p99 {q[98] * 1000:6.2f} ms  max {max(samples) * 1000:7.1f} ms"
        f"  (n={len(samples)})"
    )


async def quiet(address: str, key: str, count: int) -> str:
    """The quiet principal's latencies, and how many of its appends failed (none should)."""
    latencies: list[float] = []
    failed: list[str] = []
    began = time.perf_counter()  # the whole run must fit in the flood's
    async with EventStoreClient(address, api_key=key, retry=RetryPolicy(attempts=1)) as client:
        for i in range(count):
            started = time.perf_counter()
            try:
                await client.append(f"quiet-{os.getpid()}-{i % 10}", "Order", [Event("Placed", {})])
            except ClientError as exc:
                failed.append(exc.code.name)
                continue
            latencies.append(time.perf_counter() - started)
    took = time.perf_counter() - began
    return f"{summary(latencies)}, {len(failed)} failed {sorted(set(failed))}, in {took:.1f} s"


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def metadata_flood_request(aggregate_id: str) -> bytes:
    """An append of one event of 200,000 metadata entries (930 kB of keys, within the 1 MiB an
    event may hold), serialized once: the server refuses it from its bytes before decoding
    them, so sending the same bytes again is the cheapest flood of it."""
    entries = {f"{i:x}": "" for i in range(200_000)}
    event = pb.EventData(event_type="Paid", data=b"{}", metadata=entries)
    request = pb.AppendRequest(aggregate_id=aggregate_id, aggregate_type="Payment", events=[event])
    return request.SerializeToString()


async def flood(address: str, key: str, workers: int, seconds: float, kind: str) -> None:
    admitted = failed = unanswered = 0
    refused: Counter[str] = Counter()  # by quota, or by status code where no quota is named
    deadline = 0.0  # set once the set-up is done

    held: list[asyncio.Task[None]] = []
    large = b"x" * (1024 * 1024 - 64)  # within EVENTSTORE_LIMIT_MAX_EVENT_BYTES
    unauthenticated = b"\x0a\x01x" + b"\x22" + _varint(8 * 1024 * 1024) + b"x" * (8 * 1024 * 1024)
    heavy = metadata_flood_request(f"noisy-{os.getpid()}-metadata") if kind == "metadata" else b""
    long_aggregate = f"noisy-{os.getpid()}-long"
    credentials = (("authorization", f"Bearer {key}"),)

    async def hold(client: EventStoreClient, opened: asyncio.Event) -> None:
        async for _ in client.subscribe(aggregate_types=["Payment"]):
            opened.set()  # and keep it open, reading what comes

    async def hold_read(client: EventStoreClient, opened: asyncio.Event) -> None:
        async for _ in client.read(long_aggregate):
            opened.set()
            # Leave the rest unread: the server's next message waits on flow control, and the
            # call keeps its slot.
            await asyncio.get_running_loop().create_future()

    async def first_answer(
        task: asyncio.Task[None], opened: asyncio.Event, patience_s: float | None = None
    ) -> bool:
        """Whether `task`'s call is open (its first message came) within `patience_s`; its
        refusal is raised if it ended first."""
        waiting = asyncio.create_task(opened.wait())
        await asyncio.wait({task, waiting}, timeout=patience_s, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if task.done():
            task.result()
        return opened.is_set()

    def refusal(exc: ResourceExhaustedError) -> None:
        refused[exc.quota or exc.code.name] += 1

    async def hold_reads(slow: EventStoreClient) -> None:
        """A burst of reads at once, each answered (held open, or refused) before the next:
        the flood's unanswered calls stay within INFLIGHT_BURST per worker."""
        nonlocal admitted, failed, unanswered
        burst: list[tuple[asyncio.Task[None], asyncio.Event]] = []
        for _ in range(INFLIGHT_BURST):
            opened = asyncio.Event()
            burst.append((asyncio.create_task(hold_read(slow, opened)), opened))
        left = max(deadline - time.monotonic(), 0.0) + 5.0  # then it counts as unanswered
        outcomes = await asyncio.gather(
            *(first_answer(task, opened, left) for task, opened in burst), return_exceptions=True
        )
        for (task, _), outcome in zip(burst, outcomes, strict=True):
            if outcome is True:
                held.append(task)
                admitted += 1
            elif outcome is False:
                task.cancel()
                unanswered += 1
            elif isinstance(outcome, ResourceExhaustedError):
                refusal(outcome)
            elif isinstance(outcome, ClientError):
                failed += 1
            else:
                raise outcome

    async def worker(w: int, client: EventStoreClient, slow: EventStoreClient) -> None:
        nonlocal admitted, failed
        while time.monotonic() < deadline:
            try:
                if kind == "read":
                    await client.get_aggregate(f"noisy-{os.getpid()}-read")
                elif kind == "subscribe":
                    opened = asyncio.Event()
                    task = asyncio.create_task(hold(client, opened))
                    await first_answer(task, opened)  # raises the refusal
                    held.append(task)
                elif kind == "inflight":
                    await hold_reads(slow)
                    continue
                elif kind == "unauthenticated":
                    try:
                        await raw_append(unauthenticated, timeout=30)
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                            raise
                        refused[exc.code().name] += 1
                        continue
                elif kind == "metadata":
                    try:
                        await raw_append(heavy, metadata=credentials, timeout=30)
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                            refused[exc.code().name] += 1
                        else:
                            failed += 1
                        continue
                else:
                    aggregate = f"noisy-{os.getpid()}-{w}"
                    if kind == "events":  # the most events an append may hold
                        events = [Event("Paid", {}) for _ in range(1000)]
                    elif kind == "bytes":
                        events = [Event("Paid", large, content_type="application/octet-stream")]
                    else:
                        events = [Event("Paid", {})]
                    await client.append(aggregate, "Payment", events)
                admitted += 1
            except ResourceExhaustedError as exc:
                refusal(exc)
                await asyncio.sleep(0.01 if kind == "subscribe" else 0)
            except ClientError:  # e.g. UNAVAILABLE: the backends did not keep up
                failed += 1

    big = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    # No growing of HTTP/2 windows (BDP probing) for the held reads: each stream's stays at
    # 64 KB, so the server is soon blocked on it and the client buffers little.
    fixed_window = [("grpc.http2.bdp_probe", 0)]
    one_try = RetryPolicy(attempts=1)
    async with (
        EventStoreClient(address, api_key=key, retry=one_try) as client,
        grpc.aio.insecure_channel(address, options=big) as channel,
        EventStoreClient(
            address,
            api_key=key,
            retry=one_try,
            channel=grpc.aio.insecure_channel(address, options=fixed_window),
        ) as slow,
    ):
        raw_append = channel.unary_unary(
            "/eventstore.v1.EventStore/Append", request_serializer=None, response_deserializer=None
        )
        # Set-up, retried past the quotas (it is not the flood).
        async with EventStoreClient(address, api_key=key) as patient:
            if kind == "read":  # something to read
                await patient.append(f"noisy-{os.getpid()}-read", "Payment", [Event("Paid", {})])
            if kind == "inflight":  # 4,000 events of 1 kB: 4 MB a read, 8 pages of 500 kB
                for _ in range(4):
                    chunk = [Event("Paid", {"b": "x" * 1000}) for _ in range(1000)]
                    await patient.append(long_aggregate, "Payment", chunk)
        deadline = time.monotonic() + seconds
        print(FLOODING, flush=True)
        await asyncio.gather(*(worker(w, client, slow) for w in range(workers)))
        still_held = sum(not task.done() for task in held)
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
    total = sum(refused.values())
    why = ", ".join(f"{count} {reason}" for reason, count in refused.most_common())
    print(
        f"noisy principal, {workers} workers for {seconds:.0f} s: "
        f"{admitted} admitted ({admitted / seconds:.0f}/s), {total} refused "
        f"({total / seconds:.0f}/s{': ' + why if why else ''}), {failed} failed otherwise"
        + (f", {unanswered} unanswered" if unanswered else "")
        + (f"; {still_held} held open at the end" if kind in ("inflight", "subscribe") else ""),
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
            stdout=asyncio.subprocess.PIPE,
        )
        assert noisy.stdout is not None
        # Its set-up (an aggregate to read, say) is not measured: wait for the flood proper.
        if (await noisy.stdout.readline()).decode().strip() != FLOODING:
            raise SystemExit(f"the flood did not start (exit status {await noisy.wait()})")
        await asyncio.sleep(1.0)  # the flood is under way
        print(f"quiet principal during flood:  {await quiet(address, quiet_key, 500)}")
        print((await noisy.stdout.read()).decode(), end="", flush=True)
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
        choices=[
            "append",
            "read",
            "subscribe",
            "unauthenticated",
            "bytes",
            "inflight",
            "metadata",
            "events",
        ],
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
