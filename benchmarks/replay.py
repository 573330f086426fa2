"""Replay figures against the real local stack (make bench): full replay of a 10,000-event
aggregate vs snapshot + tail, and export throughput. Prints; asserts nothing.

Export reads the synthetic 1M-event index that benchmarks/query.py loads (run that first).
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import time
import uuid

from benchmarks.support import free_port
from eventstore.client import Event, EventStoreClient
from replayer import commands
from replayer.commands import Filters


async def start_server(extra: dict[str, str]) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    env = {
        **os.environ,
        "EVENTSTORE_LISTEN": f"127.0.0.1:{port}",
        "EVENTSTORE_LOG_LEVEL": "WARNING",
        "EVENTSTORE_AUTH_DISABLED": "true",
        **extra,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "eventstore.server", env=env
    )
    address = f"127.0.0.1:{port}"
    async with EventStoreClient(address) as client:
        for _ in range(100):
            try:
                await client.get_aggregate("warm-up-probe")
            except Exception as exc:  # noqa: BLE001 - NOT_FOUND means it is up
                if "NOT_FOUND" in str(exc):
                    break
                await asyncio.sleep(0.1)
    return process, address


async def main() -> None:
    server, address = await start_server({"EVENTSTORE_OPENSEARCH_INDEX_PREFIX": "bench-events"})
    try:
        async with EventStoreClient(address) as client:
            aggregate = f"replay-bench-{uuid.uuid4().hex[:8]}"
            for batch in range(100):
                await client.append(
                    aggregate,
                    "Counter",
                    [Event("Counted", {"n": batch * 100 + i}) for i in range(100)],
                )
            reducer = "replayer.examples.counter:reduce"
            sink = io.StringIO()
            runs = {}
            for name, kwargs in (
                (
                    "full replay (10,000 events)",
                    {"to_version": 0, "use_snapshot": False, "save_snapshot": False},
                ),
                (
                    "save snapshot at 9,900",
                    {"to_version": 9900, "use_snapshot": False, "save_snapshot": True},
                ),
                (
                    "snapshot at 9,900 + 100-event tail",
                    {"to_version": 0, "use_snapshot": True, "save_snapshot": False},
                ),
            ):
                began = time.perf_counter()
                await commands.state(client, aggregate, reducer, out=sink, **kwargs)  # type: ignore[arg-type]
                runs[name] = time.perf_counter() - began
                print(f"{name:<38} {runs[name] * 1000:8.1f} ms", flush=True)
            began = time.perf_counter()
            count = await commands.export(
                client, Filters(["Event3"], [], "", None, None), io.StringIO()
            )
            took = time.perf_counter() - began
            print(
                f"export of {count:,} events (one type, 1M-event index): {took:.1f} s = "
                f"{count / took:,.0f} events/s",
                flush=True,
            )
    finally:
        server.terminate()
        await server.wait()


if __name__ == "__main__":
    asyncio.run(main())
