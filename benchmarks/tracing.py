"""CPU per append with tracing off and on (issue #18), through the server on the real stack.

The server runs as its own process (`python -m eventstore.server`, Kafka publication on, no
indexer), with EVENTSTORE_TRACING unset, and with EVENTSTORE_TRACING=otlp exporting to an
OTLP/HTTP sink in this process (on loopback: it answers 200 to every POST and counts the
bytes) at each of `--ratios` (parentbased_traceidratio; 1: every append sampled; an append
not sampled still gets a non-recording span context, stored with its events). Runs alternate
(off, each ratio, off, ...) so that drift of the shared host falls on every mode. Per run:
appends/s, p50/p99, and the server's CPU ms per append (utime + stime from /proc, with its
descendants); the clients' and Cassandra's too (the client sends a caller's context only
when it has one: none here).

  python -m benchmarks.tracing --seconds 5 --rounds 3 --ratios 1 0

Prints a table. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from benchmarks.append import own_connection, until_up
from benchmarks.downstream import Names, remove
from benchmarks.figures import Result
from benchmarks.load import Spec, measure, server_loop
from benchmarks.support import Watched, free_port, machine, stack_pids
from eventstore.client import EventStoreClient
from eventstore.config import CassandraSettings
from eventstore.storage.cassandra import apply_schema


class Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that keeps nothing: the exporter's work is real, the collector's
    is not part of the server's cost."""

    received = 0
    requests = 0

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        Sink.received += length
        Sink.requests += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@asynccontextmanager
async def server(
    names: Names, ratio: float | None, sink: int, connections: int
) -> AsyncIterator[tuple[list[EventStoreClient], list[Watched]]]:
    port = free_port()
    env = {
        **os.environ,
        **names.env(),
        "EVENTSTORE_LISTEN": f"127.0.0.1:{port}",
        "EVENTSTORE_LOG_LEVEL": "WARNING",
        "EVENTSTORE_AUTH_DISABLED": "true",
    }
    env.pop("EVENTSTORE_TRACING", None)
    if ratio is not None:
        env.update(
            EVENTSTORE_TRACING="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{sink}",
            OTEL_TRACES_SAMPLER="parentbased_traceidratio",
            OTEL_TRACES_SAMPLER_ARG=str(ratio),
        )
    child = await asyncio.create_subprocess_exec(sys.executable, "-m", "eventstore.server", env=env)
    try:
        async with AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(
                    EventStoreClient(f"127.0.0.1:{port}", channel=own_connection(port))
                )
                for _ in range(connections)
            ]
            await until_up(clients[0], child, f"up-{names.run}-{ratio}")
            watched = [Watched(n, p) for n, p in stack_pids().items()]
            watched += [Watched("server", child.pid), Watched("client", os.getpid(), tree=False)]
            yield clients, watched
    finally:
        if child.returncode is None:
            child.terminate()
        await child.wait()


async def run(args: argparse.Namespace, names: Names, sink: int) -> list[tuple[str, Result]]:
    results: list[tuple[str, Result]] = []
    modes: list[float | None] = [None, *args.ratios]
    for round_ in range(args.rounds):
        for ratio in modes:
            mode = "off" if ratio is None else f"on {ratio:g}"
            spec = Spec(f"r{round_}", args.clients, 1)
            async with server(names, ratio, sink, args.connections) as (clients, watched):
                before = Sink.received
                result, _ = await measure(
                    "server", spec, args.seconds, args.warmup, watched, server_loop(clients, spec)
                )
            lat = result.latency_ms or {}
            cpu = result.cpu_ms_per_append
            print(
                f"  tracing {mode:<6} round {round_}: {result.appends_per_s:5.0f} appends/s  "
                f"p50 {lat.get('p50', 0):5.1f} ms  p99 {lat.get('p99', 0):6.1f} ms  "
                f"server {cpu.get('server') or 0:.3f} ms CPU/append  "
                f"client {cpu.get('client') or 0:.3f}  cassandra {cpu.get('cassandra') or 0:.3f}"
                f"  errors {result.errors}  OTLP bytes {Sink.received - before}",
                flush=True,
            )
            results.append((mode, result))
    return results


async def main(args: argparse.Namespace) -> None:
    names = Names.fresh()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=httpd.serve_forever, name="otlp-sink", daemon=True).start()
    print(
        f"machine: {machine()}; stack, server and clients on this host; {args.clients} clients "
        f"over {args.connections} connections, single-event appends, {args.seconds} s each "
        f"after {args.warmup} s of warm-up",
        flush=True,
    )
    try:
        await apply_schema(CassandraSettings(keyspace=names.keyspace))
        results = await run(args, names, httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()
        try:
            await asyncio.to_thread(remove, names)
        except Exception as exc:  # noqa: BLE001 - the figures matter more than the clean-up
            print(f"could not remove the run's keyspace, topics or indices: {exc!r}")
    for mode in dict.fromkeys(m for m, _ in results):
        runs = [r for m, r in results if m == mode]
        appends = sum(r.appends for r in runs)
        server_ms = sum((r.cpu_ms_per_append.get("server") or 0) * r.appends for r in runs)
        print(
            f"tracing {mode:<6}: {appends} appends, server {server_ms / max(appends, 1):.3f} ms "
            f"CPU per append, {sum(r.appends_per_s for r in runs) / len(runs):.0f} appends/s"
        )
    print(f"OTLP: {Sink.requests} requests, {Sink.received} bytes", flush=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured, per run")
    parser.add_argument("--rounds", type=int, default=3, help="of runs: off, then each ratio")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument(
        "--ratios",
        type=float,
        nargs="+",
        default=[1.0],
        help="sampling ratios to run with tracing on (1: every append, 0: none)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
