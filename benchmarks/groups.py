"""Consumer group delivery latency and the pause a member joining causes (#17).

One server (`python -m eventstore.server`) and the indexer as subprocesses on a fresh keyspace
and topics; appends of single events at a steady `--rate` per second to `--aggregates`
aggregates for `--seconds`; one group member from the start, a second one joining half-way.
Prints, over the deliveries: commit to member latency (the member's receive time minus the
event's recorded_at, one host's clock) as p50/p99/max, before and after the join; the
longest gap between two deliveries after the join against the median gap before it; and when
the new member got its first delivery. Asserts nothing.

    python -m benchmarks.groups [--rate 200] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from datetime import UTC, datetime

from benchmarks.append import server_and_indexer
from benchmarks.downstream import Names, remove
from benchmarks.figures import latency_ms
from eventstore.client import Event, EventStoreClient
from eventstore.config import CassandraSettings
from eventstore.storage.cassandra import apply_schema

KIND = "BenchGroup"


class Received:
    def __init__(self) -> None:
        self.at: list[tuple[float, float, str]] = []  # (monotonic, latency s, member)
        self.first = asyncio.Event()

    async def member(self, client: EventStoreClient, name: str, group: str) -> None:
        async with client.subscribe_group(group, aggregate_types=[KIND]) as member:
            async for delivery in member:
                now = datetime.now(UTC)
                latency = (now - delivery.event.recorded_at).total_seconds()
                self.at.append((time.monotonic(), latency, name))
                self.first.set()
                await member.ack(delivery)


async def run(args: argparse.Namespace) -> None:
    names = Names.fresh()
    await apply_schema(CassandraSettings(keyspace=names.keyspace))
    options = argparse.Namespace(processes=None, auth=False, connections=3)
    try:
        async with server_and_indexer(names, options) as (clients, _):
            writer, first, second = clients
            group = f"bench-{names.run}"
            await writer.append(f"{names.run}-0", KIND, [Event("Warm", {})])
            received = Received()
            members = [asyncio.create_task(received.member(first, "first", group))]
            await received.first.wait()  # joined and serving
            started = time.monotonic()

            async def appender() -> None:
                sent = 0
                while (elapsed := time.monotonic() - started) < args.seconds:
                    due = int(elapsed * args.rate)
                    while sent < due:
                        aggregate = f"{names.run}-{sent % args.aggregates}"
                        await writer.append(aggregate, KIND, [Event("Happened", {"n": sent})])
                        sent += 1
                    await asyncio.sleep(0.005)

            load = asyncio.create_task(appender())
            await asyncio.sleep(args.seconds / 2)
            joined_at = time.monotonic()
            members.append(asyncio.create_task(received.member(second, "second", group)))
            await load
            await asyncio.sleep(3)
            for task in members:
                task.cancel()
            await asyncio.gather(*members, return_exceptions=True)
    finally:
        await asyncio.to_thread(remove, names)
    before = [r for r in received.at if started <= r[0] < joined_at]
    after = [r for r in received.at if r[0] >= joined_at]
    gaps_before = [b[0] - a[0] for a, b in itertools.pairwise(before)]
    after_times = [joined_at] + [r[0] for r in after]
    gaps_after = [b - a for a, b in itertools.pairwise(after_times)]
    second_first = next((r[0] - joined_at for r in after if r[2] == "second"), None)
    print(
        f"load: {args.rate} single-event appends/s to {args.aggregates} aggregates for "
        f"{args.seconds} s; {len(received.at) - 1} deliveries"
    )
    for label, rows in (("before the join", before), ("after the join", after)):
        figures = latency_ms([r[1] for r in rows]) or {}
        print(
            f"  commit to member, {label}: "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in figures.items())
        )
    if gaps_before and gaps_after:
        print(
            f"  gap between deliveries: median before {statistics.median(gaps_before) * 1000:.1f}"
            f" ms; longest after the join {max(gaps_after) * 1000:.0f} ms"
        )
    print(
        f"  the joining member's first delivery: "
        f"{'none' if second_first is None else f'{second_first:.2f} s'} after it joined; "
        f"deliveries after the join: first {sum(r[2] == 'first' for r in after)}, "
        f"second {sum(r[2] == 'second' for r in after)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=200, help="appends per second")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--aggregates", type=int, default=100)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
