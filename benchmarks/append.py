"""Append throughput, latency and CPU per append against the real local stack (make bench; #15).

Each workload runs `clients` loops of appends of `batch` events (~100 B JSON each) on distinct
aggregates for a fixed time, after an unmeasured warm-up:

1. the storage adapter's own loop (`CassandraEventStorage.append` in this process, no gRPC)
   at 1x1, Nx1, Nx10 and Nx100 (clients x events per append);
2. the gRPC floor: the same client loops at Nx1 against `benchmarks.null_server` (the store's
   service, Append answers at once and stores nothing): grpc aio's own CPU per call;
3. through the server (`python -m eventstore.server`, its own process, Kafka publication on)
   with the indexer running (`python -m indexer.main`): 1x1, Nx1 exact, Nx1 any, Nx10, Nx100;
4. the sustained search: through the server, `--sustain-clients` loops at batch sizes 1, 2,
   5, 10 for `--sustain-seconds` each, until one holds 10,000 events/s over the whole time;
   then the adapter loop's ceiling at that batch size (server and indexer stopped).

Per workload: appends/s, events/s, p50/p99/max, CPU ms per append of every process (utime +
stime from /proc, before and after the load; the server with all its descendants), the
ratios to the adapter loop at the same clients and batch size, and, through the server, the
publication and indexing lag (committed events not yet in the workload's Kafka topic, not yet
searchable, when the load ended; and how long until they all were). A fresh keyspace, topic
prefix and index prefix per run keep those counts exact; all are removed at the end.

Prints a table, writes a JSON file and an SVG plot beside it. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from benchmarks import plot
from benchmarks.downstream import Downstream, Names, remove
from benchmarks.figures import Result, add_ratios, table
from benchmarks.load import Spec, adapter_loop, measure, server_loop
from benchmarks.support import (
    PAYLOAD,
    REPO,
    Watched,
    free_port,
    git_commit,
    machine,
    stack_pids,
)
from eventstore.access_cli import new_key
from eventstore.client import Event, EventStoreClient
from eventstore.config import CassandraSettings
from eventstore.domain.access import hash_key
from eventstore.sizes import CLIENT_MAX_RECEIVE_BYTES
from eventstore.storage.cassandra import CassandraEventStorage, apply_schema

TARGET_EVENTS_PER_S = 10_000


def announce(result: Result) -> None:
    lat = result.latency_ms or {}
    print(
        f"  {result.path:<8}{result.phase:<8}{result.label:>10}  {result.appends_per_s:8.0f} "
        f"appends/s {result.events_per_s:8.0f} events/s  p99 {lat.get('p99', 0):7.1f} ms  "
        f"errors {result.errors}",
        flush=True,
    )


async def adapter_workloads(
    settings: CassandraSettings, specs: list[Spec], args: argparse.Namespace
) -> list[Result]:
    watched = [Watched(n, p) for n, p in stack_pids().items()]
    watched.append(Watched("client", os.getpid(), tree=False))
    storage = await CassandraEventStorage.connect(settings)
    results = []
    try:
        for spec in specs:
            result, _ = await measure(
                "adapter", spec, args.seconds, args.warmup, watched, adapter_loop(storage, spec)
            )
            announce(result)
            results.append(result)
    finally:
        await storage.close()
    return results


@asynccontextmanager
async def server_and_indexer(
    names: Names, args: argparse.Namespace
) -> AsyncIterator[tuple[list[EventStoreClient], list[Watched]]]:
    """The server and the indexer as subprocesses on the run's names; a client once the server
    answers; what to watch (the stack, both subprocesses with descendants, this process)."""
    port = free_port()
    env = {
        **os.environ,
        **names.env(),
        "EVENTSTORE_LISTEN": f"127.0.0.1:{port}",
        "EVENTSTORE_LOG_LEVEL": "WARNING",
        "EVENTSTORE_INDEXER_LOG_LEVEL": "WARNING",
    }
    if args.processes:
        env["EVENTSTORE_PROCESSES"] = str(args.processes)
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
    children = [
        await asyncio.create_subprocess_exec(sys.executable, "-m", module, env=env)
        for module in ("eventstore.server", "indexer.main")
    ]
    server, indexer = children
    try:
        async with AsyncExitStack() as connections:
            clients = [
                await connections.enter_async_context(
                    EventStoreClient(
                        f"127.0.0.1:{port}", api_key=api_key, channel=own_connection(port)
                    )
                )
                for _ in range(args.connections)
            ]
            await until_up(clients[0], server, f"up-{names.run}")
            watched = [Watched(n, p) for n, p in stack_pids().items()]
            watched += [
                Watched("server", server.pid),
                Watched("indexer", indexer.pid),
                Watched("client", os.getpid(), tree=False),
            ]
            yield clients, watched
    finally:
        for child in children:
            if child.returncode is None:
                child.terminate()
            await child.wait()


async def until_up(
    client: EventStoreClient, server: asyncio.subprocess.Process, aggregate: str
) -> None:
    """Once `server` takes an append (60 s at most)."""
    for _ in range(600):
        if server.returncode is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            await client.append(aggregate, "BenchUp", [Event("Up", {})])
            return
        except Exception:  # noqa: BLE001 - not up yet
            await asyncio.sleep(0.1)
    raise RuntimeError("the server did not take an append in 60 s")


async def grpc_floor(spec: Spec, args: argparse.Namespace) -> Result:
    """The same client loops against `benchmarks.null_server` (Append answers at once, nothing
    stored): what grpc aio alone costs per call, in the server and in the client."""
    port = free_port()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.null_server", str(port)
    )
    try:
        async with AsyncExitStack() as connections:
            clients = [
                await connections.enter_async_context(
                    EventStoreClient(f"127.0.0.1:{port}", channel=own_connection(port))
                )
                for _ in range(args.connections)
            ]
            await until_up(clients[0], child, "floor-up")
            watched = [Watched("server", child.pid), Watched("client", os.getpid(), tree=False)]
            result, _ = await measure(
                "floor", spec, args.seconds, args.warmup, watched, server_loop(clients, spec)
            )
    finally:
        if child.returncode is None:
            child.terminate()
        await child.wait()
    announce(result)
    return result


def own_connection(port: int) -> grpc.aio.Channel:
    """A channel with a connection of its own: gRPC otherwise shares one connection between
    channels to the same target (its global subchannel pool)."""
    return grpc.aio.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_receive_message_length", CLIENT_MAX_RECEIVE_BYTES),
        ],
    )


async def server_workload(
    spec: Spec,
    clients: list[EventStoreClient],
    watched: list[Watched],
    downstream: Downstream,
    args: argparse.Namespace,
) -> Result:
    seconds = args.sustain_seconds if spec.phase == "sustain" else args.seconds
    result, committed = await measure(
        "server", spec, seconds, args.warmup, watched, server_loop(clients, spec)
    )
    result.publication, result.indexing = await asyncio.to_thread(
        downstream.catch_up,
        spec.aggregate_type,
        committed + 1,
        args.lag_timeout,  # + its first
    )
    announce(result)
    return result


async def first_events(
    client: EventStoreClient, downstream: Downstream, specs: list[Spec], timeout_s: float
) -> None:
    """One event of each workload's type before any load: its topic exists, and the indexer
    (which finds new topics by a periodic metadata refresh) has picked it up, so indexing lag
    is the indexer's pace rather than the discovery of a topic created during the load."""
    for spec in specs:
        await client.append(f"{spec.aggregate_type}-first", spec.aggregate_type, [Event("Up", {})])
    started = time.monotonic()
    for spec in specs:
        _, indexing = await asyncio.to_thread(
            downstream.catch_up, spec.aggregate_type, 1, timeout_s - (time.monotonic() - started)
        )
        if indexing.caught_up_s is None:
            raise RuntimeError(f"the indexer did not index {spec.aggregate_type} in {timeout_s} s")
    print(f"  indexer follows all {len(specs)} topics after {time.monotonic() - started:.1f} s")


async def run(args: argparse.Namespace, names: Names) -> tuple[list[Result], int | None]:
    """Every workload's results, and the smallest batch size that sustained the target."""
    n = args.clients
    fixed = [Spec("fixed", 1, 1), Spec("fixed", n, 1), Spec("fixed", n, 10), Spec("fixed", n, 100)]
    results = await adapter_workloads(CassandraSettings(keyspace=names.keyspace), fixed, args)
    results.append(await grpc_floor(fixed[1], args))
    through_server = [*fixed[:2], Spec("fixed", n, 1, "any"), *fixed[2:]]
    sustain = [
        Spec("sustain", args.sustain_clients, batch)
        for batch in (args.sustain_batches if args.sustain_seconds > 0 else ())
    ]
    reached: int | None = None
    tried: list[int] = []
    downstream = Downstream(names)
    try:
        async with server_and_indexer(names, args) as (clients, watched):
            await first_events(
                clients[0], downstream, [*through_server, *sustain], args.lag_timeout
            )
            for spec in through_server:
                results.append(await server_workload(spec, clients, watched, downstream, args))
            for spec in sustain:
                tried.append(spec.batch)
                result = await server_workload(spec, clients, watched, downstream, args)
                results.append(result)
                if result.events_per_s >= TARGET_EVENTS_PER_S:
                    reached = spec.batch
                    break
    finally:
        downstream.close()
    if tried:
        # The adapter loop's ceiling at the batch size that reached the target (or the
        # largest tried), with the server and the indexer stopped.
        spec = Spec("ceiling", args.sustain_clients, reached or tried[-1])
        results += await adapter_workloads(CassandraSettings(keyspace=names.keyspace), [spec], args)
    add_ratios(results)
    return results, reached


def targets(results: list[Result], reached: int | None, clients: int) -> dict[str, Any]:
    """#15's targets, as measured in this run (None: not measured, or not reached)."""
    single = next((r for r in results if r.path == "server" and r.label == f"{clients}x1"), None)
    sustain = [r for r in results if r.phase == "sustain"]
    best = max(sustain, key=lambda r: r.events_per_s, default=None)
    ceiling = next((r for r in results if r.phase == "ceiling"), None)
    found: dict[str, Any] = {}
    if single is not None:
        found[f"{clients}x1 exact: appends/s over the adapter loop's (>= 0.8)"] = single.ratios.get(
            "appends_per_s"
        )
        found[f"{clients}x1 exact: p99 ms (< 50)"] = (single.latency_ms or {}).get("p99")
        found[f"{clients}x1 exact: server CPU per append over the adapter loop's (<= 2)"] = (
            single.ratios.get("server_cpu")
        )
    floor = next((r for r in results if r.path == "floor"), None)
    if floor is not None:
        # Target 2 cannot be met in one process if gRPC's own cost plus the storage call's
        # already exceeds twice the storage call's.
        found[f"{clients}x1: gRPC floor + adapter loop CPU per append over the loop's (vs 2)"] = (
            floor.ratios.get("floor_cpu")
        )
    if best is not None:
        found[f"smallest batch sustaining {TARGET_EVENTS_PER_S} events/s (<= 10)"] = reached
        found[f"best sustained: events/s at {best.label}"] = round(best.events_per_s)
        found[f"best sustained: p99 ms at {best.label} (< 200)"] = (best.latency_ms or {}).get(
            "p99"
        )
    if ceiling is not None:
        found[f"adapter loop's events/s at {ceiling.label}"] = round(ceiling.events_per_s)
    return found


def write_outputs(
    args: argparse.Namespace, names: Names, results: list[Result], facts: dict[str, Any]
) -> tuple[Path, Path]:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = Path(args.json) if args.json else REPO / "build" / "bench" / f"append-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    document = {
        **facts,
        "settings": {**settings, "keyspace": names.keyspace, "topic_prefix": names.topic_prefix},
        "workloads": [r.as_json() for r in results],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    figure = path.with_suffix(".svg")
    title = (
        f"benchmarks.append {facts['started_at']} @ {str(facts['git']['commit'])[:10]}: "
        f"{facts['machine']['cores']} cores, shared stack"
    )
    figure.write_text(plot.svg(plot.panels(results), title))
    return path, figure


async def main(args: argparse.Namespace) -> None:
    names = Names.fresh()
    facts: dict[str, Any] = {
        "benchmark": "benchmarks.append",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "git": git_commit(),
        "stack_pids": stack_pids(),
        "payload_bytes": len(Event("X", PAYLOAD).payload()),
    }
    print(
        f"machine: {facts['machine']}; Cassandra, Kafka, OpenSearch, server, indexer and "
        f"clients on this host; payload {facts['payload_bytes']} B JSON; keyspace "
        f"{names.keyspace}; server: authentication {'on' if args.auth else 'off'}, "
        f"EVENTSTORE_PROCESSES={args.processes or 'unset'}",
        flush=True,
    )
    try:
        await apply_schema(CassandraSettings(keyspace=names.keyspace))
        results, reached = await run(args, names)
    finally:
        try:
            await asyncio.to_thread(remove, names)
        except Exception as exc:  # noqa: BLE001 - the figures matter more than the clean-up
            print(f"could not remove the run's keyspace, topics or indices: {exc!r}")
    facts["machine"]["load_average_at_end"] = os.getloadavg()
    facts["targets"] = targets(results, reached, args.clients)
    path, figure = write_outputs(args, names, results, facts)
    print()
    print(table(results))
    print()
    for name, value in facts["targets"].items():
        shown = f"{value:.2f}" if isinstance(value, float) else value
        print(f"  {name}: {'not reached' if value is None else shown}")
    print(f"\nJSON: {path}\nplot: {figure}", flush=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short loads: a smoke run")
    parser.add_argument("--seconds", type=float, help="per workload (15; --quick 3)")
    parser.add_argument("--warmup", type=float, help="unmeasured, per workload (2; --quick 0.5)")
    parser.add_argument("--clients", type=int, default=16, help="of the N-client workloads")
    parser.add_argument(
        "--connections",
        type=int,
        default=8,
        help="gRPC connections the client loops share: the kernel hands each connection to one "
        "server process (SO_REUSEPORT), so one connection would leave all but one idle",
    )
    parser.add_argument("--sustain-clients", type=int, default=64)
    parser.add_argument(
        "--sustain-seconds", type=float, help="per batch size tried (60; --quick 5; 0: skip)"
    )
    parser.add_argument(
        "--sustain-batches",
        type=lambda text: [int(b) for b in text.split(",")],
        default=[1, 2, 5, 10],
        help="batch sizes to try, in order (1,2,5,10)",
    )
    parser.add_argument(
        "--lag-timeout", type=float, help="wait at most this for Kafka and OpenSearch (120; 30)"
    )
    parser.add_argument(
        "--processes", type=int, help="EVENTSTORE_PROCESSES for the server (unset by default)"
    )
    parser.add_argument(
        "--auth", action="store_true", help="server with a permissions file, clients with a key"
    )
    parser.add_argument("--json", help="where to write the figures (build/bench/append-*.json)")
    args = parser.parse_args(argv)
    quick = args.quick
    for name, normal, short in (
        ("seconds", 15.0, 3.0),
        ("warmup", 2.0, 0.5),
        ("sustain_seconds", 60.0, 5.0),
        ("lag_timeout", 120.0, 30.0),
    ):
        if getattr(args, name) is None:
            setattr(args, name, short if quick else normal)
    return args


if __name__ == "__main__":
    asyncio.run(main(parse()))
