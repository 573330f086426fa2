"""What a registered schema costs an append (#19): python -m benchmarks.schemas.

1. In process, no I/O: `SchemaCatalog.stamp` (the append path's validation against a cached,
   compiled JSON Schema, and the stamp of `$schema_version`) on one ~100 B event, for a type
   with a schema and one without: CPU microseconds per event.
2. Through the server (its own process on the local stack, the indexer beside it, as
   `make bench` runs it): one client appending one event at a time, alternating rounds of a
   type without a schema and one with a registered schema (same payload), `--rounds` rounds of
   `--seconds` each per type: appends/s and latency percentiles per type.

Prints the figures. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid

from benchmarks.append import server_and_indexer
from benchmarks.downstream import Names, remove
from benchmarks.figures import latency_ms
from eventstore.client import Event, EventStoreClient
from eventstore.config import CassandraSettings
from eventstore.domain.access import UNRESTRICTED
from eventstore.domain.events import AppendRequest, ExpectedVersion, NewEvent
from eventstore.domain.schemas import SchemaFormat, SchemaLimits, SchemaRegistration
from eventstore.storage.cassandra import apply_schema
from eventstore.storage.memory import InMemorySchemaRegistry
from eventstore.usecases.append import utc_now_ms
from eventstore.usecases.schemas import SchemaCatalog, Schemas

SCHEMA = {
    "type": "object",
    "properties": {
        "order_id": {"type": "string", "maxLength": 64},
        "customer": {"type": "string", "x-personal": True},
        "amount": {"type": "number", "minimum": 0},
        "currency": {"type": "string", "enum": ["EUR", "USD", "GBP"]},
        "lines": {"type": "array", "items": {"type": "integer"}},
    },
    "required": ["order_id", "amount", "currency"],
}
DATA = {"order_id": "o-12345", "customer": "Ada", "amount": 12.5, "currency": "EUR", "lines": [1]}


async def in_process(count: int) -> dict[str, float]:
    registry = InMemorySchemaRegistry()
    catalog = SchemaCatalog(registry)
    schemas = Schemas(registry, catalog, SchemaLimits(), clock=utc_now_ms)
    await schemas.register(
        SchemaRegistration(
            "Order", "Placed", SchemaFormat.JSON_SCHEMA, json.dumps(SCHEMA).encode(), None
        ),
        UNRESTRICTED,
    )
    payload = json.dumps(DATA).encode()
    out: dict[str, float] = {}
    for event_type in ("Unschemad", "Placed"):
        request = AppendRequest(
            "o-1",
            "Order",
            ExpectedVersion.any(),
            (NewEvent(uuid.uuid4(), event_type, payload, "application/json"),),
        )
        await catalog.stamp(request)  # fills the cache
        started = time.process_time()
        for _ in range(count):
            await catalog.stamp(request)
        out[event_type] = (time.process_time() - started) / count * 1e6
    return out


async def through_server(client: EventStoreClient, run: str, args: argparse.Namespace) -> None:
    kinds = {"no schema": f"Plain{run}", "schema": f"Typed{run}"}
    await client.register_schema(kinds["schema"], "Placed", SCHEMA)
    latencies: dict[str, list[float]] = {name: [] for name in kinds}
    counted_s: dict[str, float] = dict.fromkeys(kinds, 0.0)
    for kind in kinds.values():  # warm-up: connections, prepared statements, caches
        for i in range(50):
            await client.append(f"{kind}-warm-{i}", kind, [Event("Placed", DATA)])
    for round_ in range(args.rounds):
        for name, kind in kinds.items():
            started = time.monotonic()
            i = 0
            while time.monotonic() - started < args.seconds:
                before = time.perf_counter()
                await client.append(f"{kind}-{round_}-{i}", kind, [Event("Placed", DATA)])
                latencies[name].append(time.perf_counter() - before)
                i += 1
            counted_s[name] += time.monotonic() - started
    for name, values in latencies.items():
        ms = latency_ms(values) or {"p50": 0.0, "p99": 0.0, "max": 0.0}
        print(
            f"  {name:10s} {len(values) / counted_s[name]:7.1f} appends/s  "
            f"p50 {ms['p50']:6.2f} ms  p99 {ms['p99']:6.2f} ms  max {ms['max']:7.2f} ms  "
            f"mean {statistics.fmean(values) * 1000:6.2f} ms  (n={len(values)})"
        )


async def run(args: argparse.Namespace) -> None:
    cpu = await in_process(args.count)
    print(f"validation on the append path (in process, {args.count} events, CPU per event):")
    print(f"  no schema  {cpu['Unschemad']:7.1f} us")
    print(f"  schema     {cpu['Placed']:7.1f} us")
    if args.skip_server:
        return
    names = Names.fresh()
    await apply_schema(CassandraSettings(keyspace=names.keyspace))
    options = argparse.Namespace(processes=None, auth=False, connections=1)
    try:
        async with server_and_indexer(names, options) as (clients, _):
            print(
                f"through the server (1 client, 1 event per append, {args.rounds} alternating "
                f"rounds of {args.seconds} s per type):"
            )
            await through_server(clients[0], names.run, args)
    finally:
        await asyncio.to_thread(remove, names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--skip-server", action="store_true")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
