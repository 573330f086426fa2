"""What publication costs per append, and whether it stays flat over a long run (make bench).

Same run, 16 clients on distinct aggregates, single-event exact appends (~100 B JSON):

1. the storage adapter's own loop: the conditional batch through cassandra-driver, in this
   process, no gRPC and no publication;
2. the same workload through the server (its own process, publishing to Kafka).

For each, appends/s and the CPU per append of every process (utime + stime from
/proc/<pid>/stat before and after), and the ratios that survive a noisy machine: Cassandra's
CPU per append through the server over the adapter loop's. The server's journal writes per
append come from its metrics (group commit: one write serves every append that arrived while
the previous one was in flight).

``--soak N`` then appends N more through the server and reports every N/10: appends/s, the
relay round's duration, and the tombstones Cassandra met per read of the publication tables
(system_views.tombstones_per_read): both must stay flat. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable

from cassandra.cluster import Cluster

from benchmarks.support import (
    PAYLOAD,
    Watched,
    cpu_ms_per_append,
    cpu_snapshot,
    free_port,
    stack_pids,
)
from eventstore.client import Event, EventStoreClient, ExpectedVersion
from eventstore.config import CassandraSettings
from eventstore.domain.events import NewEvent
from eventstore.storage.cassandra import CassandraEventStorage, apply_schema
from eventstore.storage.catalog import CassandraAggregateCatalog
from eventstore.storage.outbox import CassandraPublicationLog
from eventstore.usecases.append import utc_now_ms
from eventstore.usecases.journal import WriterJournal

WORKERS = 16
PUBLICATION_TABLES = ("publication_journal", "publication_writers", "publication_cursor")


def watched(pids: dict[str, int]) -> list[Watched]:
    # "this" is the load generator: not its children (the server)
    return [Watched(name, pid, tree=name != "this") for name, pid in pids.items()]


async def measure(
    name: str,
    seconds: float,
    pids: dict[str, int],
    append: Callable[[int], Awaitable[None]],
    rate: float | None = None,
) -> tuple[float, dict[str, float]]:
    """Run WORKERS loops of `append` for `seconds` (paced to `rate` appends/s in all, if
    given); appends/s and CPU ms per append."""
    done = 0
    stop = time.monotonic() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        started, n = time.monotonic(), 0
        while time.monotonic() < stop:
            await append(w)
            done += 1
            n += 1
            if rate:
                await asyncio.sleep(max(started + n * WORKERS / rate - time.monotonic(), 0))

    before = cpu_snapshot(watched(pids))
    started = time.monotonic()
    await asyncio.gather(*(worker(w) for w in range(WORKERS)))
    elapsed = time.monotonic() - started
    per_append = {
        p: ms or 0.0
        for p, ms in cpu_ms_per_append(before, cpu_snapshot(watched(pids)), done).items()
    }
    cpu = "  ".join(f"{p} {ms:.2f}" for p, ms in per_append.items())
    print(f"{name:<30} {done / elapsed:7.0f} appends/s   CPU ms/append: {cpu}", flush=True)
    return done / elapsed, per_append


async def idle(pids: dict[str, int], seconds: float = 5.0) -> None:
    """What each process burns doing nothing: spread over fewer appends, it weighs more."""
    before = cpu_snapshot(watched(pids))
    await asyncio.sleep(seconds)
    used_ms = cpu_ms_per_append(before, cpu_snapshot(watched(pids)), appends=1)  # in all
    used = "  ".join(f"{p} {(ms or 0.0) / seconds:.0f}" for p, ms in used_ms.items())
    print(f"{'idle, CPU ms per second':<30} {used}", flush=True)


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        values = {}
        for line in response.read().decode().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                values[key] = float(value)
        return values


def tombstones(session: object, keyspace: str) -> str:
    rows = session.execute(  # type: ignore[attr-defined]
        "SELECT table_name, count, p99th, max FROM system_views.tombstones_per_read "
        "WHERE keyspace_name = %s",
        (keyspace,),
    )
    parts = [
        f"{r.table_name} reads {r.count} p99 {r.p99th:.0f} max {r.max:.0f}"
        for r in rows
        if r.table_name in PUBLICATION_TABLES
    ]
    return "; ".join(parts)


async def main(args: argparse.Namespace) -> None:
    keyspace = f"bench_publication_{uuid.uuid4().hex[:8]}"
    settings = CassandraSettings(keyspace=keyspace)
    await apply_schema(settings)
    pids = stack_pids()
    pids["this"] = os.getpid()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; everything on this host; {WORKERS} clients on distinct "
        f"aggregates, single-event exact appends, {args.seconds:.0f} s each; keyspace {keyspace}",
        flush=True,
    )
    payload = Event("X", PAYLOAD).payload()

    storage = await CassandraEventStorage.connect(settings)
    try:
        heads = [0] * WORKERS

        async def direct(w: int) -> None:
            event = NewEvent(uuid.uuid4(), "OrderPlaced", payload, "application/json")
            await storage.append(f"direct-{w}", "Order", heads[w], [event], utc_now_ms())
            heads[w] += 1

        base_rate, base_cpu = await measure("adapter loop", args.seconds, pids, direct)

        # The same loop with the publication journal around each append (group commit,
        # heartbeats, settling; no Kafka): Cassandra's cost of the bookkeeping alone, at a
        # throughput close to the loop's, so fixed background costs weigh the same.
        outbox = await CassandraPublicationLog.create(storage.connection)
        journal = WriterJournal(outbox, await CassandraAggregateCatalog.create(storage.connection))
        await journal.beat()

        async def beating() -> None:
            while True:
                await asyncio.sleep(1)
                await journal.beat()

        beats = asyncio.create_task(beating())

        async def journaled(w: int) -> None:
            event = NewEvent(uuid.uuid4(), "OrderPlaced", payload, "application/json")
            seq = await journal.announce(f"direct-{w}")
            await storage.append(f"direct-{w}", "Order", heads[w], [event], utc_now_ms())
            journal.settled(seq)
            heads[w] += 1

        writes, announced = journal.writes, journal.announced
        rate, cpu = await measure("adapter loop + journal", args.seconds, pids, journaled)
        beats.cancel()
        print(
            f"ratios: Cassandra CPU per append {cpu['cassandra'] / base_cpu['cassandra']:.2f}x "
            f"the adapter loop's; appends/s {rate / base_rate:.2f}x; journal writes per append "
            f"{(journal.writes - writes) / max(journal.announced - announced, 1):.3f}",
            flush=True,
        )
        await idle(pids)
    finally:
        await storage.close()

    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "EVENTSTORE_LISTEN": f"127.0.0.1:{port}",
        "EVENTSTORE_CASSANDRA_KEYSPACE": keyspace,
        "EVENTSTORE_KAFKA_TOPIC_PREFIX": f"{keyspace}.",
        "EVENTSTORE_METRICS_PORT": str(metrics_port),
        "EVENTSTORE_LOG_LEVEL": "WARNING",
        "EVENTSTORE_AUTH_DISABLED": "true",
    }
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "eventstore.server", env=env
    )
    try:
        async with EventStoreClient(f"127.0.0.1:{port}") as client:
            for _ in range(300):
                try:
                    await client.append("warmup", "Order", [Event("Up", {})])
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    await asyncio.sleep(0.1)
            pids["server"] = server.pid
            heads = [0] * WORKERS

            async def via_server(w: int) -> None:
                event = Event("OrderPlaced", PAYLOAD)
                result = await client.append(
                    f"grpc-{w}", "Order", [event], expected=ExpectedVersion.exact(heads[w])
                )
                heads[w] = result.last_version

            before = scrape(metrics_port)
            rate, cpu = await measure("through the server", args.seconds, pids, via_server)
            after = scrape(metrics_port)
            server_writes = after["eventstore_journal_writes"] - before["eventstore_journal_writes"]
            server_announced = (
                after["eventstore_journal_announcements"]
                - before["eventstore_journal_announcements"]
            )
            print(
                f"ratios: appends/s {rate / base_rate:.2f}x the adapter loop; Cassandra CPU per "
                f"append {cpu['cassandra'] / base_cpu['cassandra']:.2f}x; server CPU per append "
                f"{cpu['server'] / base_cpu['this']:.2f}x the adapter loop's process; journal "
                f"writes per append {server_writes / max(server_announced, 1):.3f}",
                flush=True,
            )
        # Cassandra's CPU per request grows as its load falls (fewer requests share each
        # wake-up and network flush): compare with the adapter loop at the server's rate too.
        paced_storage = await CassandraEventStorage.connect(settings)
        paced_heads = [0] * WORKERS

        async def paced(w: int) -> None:
            event = NewEvent(uuid.uuid4(), "OrderPlaced", payload, "application/json")
            await paced_storage.append(f"paced-{w}", "Order", paced_heads[w], [event], utc_now_ms())
            paced_heads[w] += 1

        try:
            _, paced_cpu = await measure(
                "adapter loop at that rate", args.seconds, pids, paced, rate=rate
            )
        finally:
            await paced_storage.close()
        print(
            f"ratio at the same rate: Cassandra CPU per append through the server "
            f"{cpu['cassandra'] / paced_cpu['cassandra']:.2f}x the adapter loop's",
            flush=True,
        )
        async with EventStoreClient(f"127.0.0.1:{port}") as client:
            if args.soak:
                await soak(args.soak, client, metrics_port, keyspace)
    finally:
        server.terminate()
        await server.wait()


async def soak(total: int, client: EventStoreClient, metrics_port: int, keyspace: str) -> None:
    cluster = Cluster(["127.0.0.1"], protocol_version=5)
    session = cluster.connect()
    step = max(total // 10, WORKERS)
    done = 0
    counts = [0] * WORKERS
    print(f"soak: {total} appends through the server, a report every {step}", flush=True)
    try:
        while done < total:
            before = scrape(metrics_port)
            started = time.monotonic()
            per_worker = step // WORKERS

            async def worker(w: int, appends: int = per_worker) -> None:
                for _ in range(appends):
                    # ANY appends; a new aggregate every 50 (the catalog and cursors see many)
                    await client.append(
                        f"soak-{w}-{counts[w] // 50}", "Order", [Event("OrderPlaced", PAYLOAD)]
                    )
                    counts[w] += 1

            await asyncio.gather(*(worker(w) for w in range(WORKERS)))
            done += per_worker * WORKERS
            elapsed = time.monotonic() - started
            after = scrape(metrics_port)
            rounds = after["eventstore_relay_round_seconds_count"] - before.get(
                "eventstore_relay_round_seconds_count", 0
            )
            spent = after["eventstore_relay_round_seconds_sum"] - before.get(
                "eventstore_relay_round_seconds_sum", 0
            )
            print(
                f"  {done:>8} appends  {per_worker * WORKERS / elapsed:6.0f}/s  relay round "
                f"mean {spent / max(rounds, 1) * 1000:6.2f} ms over {rounds:.0f} rounds  "
                f"open entries {after['eventstore_journal_open_entries']:.0f}  tombstones per "
                f"read: {tombstones(session, keyspace)}",
                flush=True,
            )
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of each load")
    parser.add_argument("--soak", type=int, default=0, help="appends in the soak (0: none)")
    asyncio.run(main(parser.parse_args()))
