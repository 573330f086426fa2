"""One figure of the REST/JSON face: the round trip of GetAggregate and of a one-event Append
over REST (aiohttp client, keep-alive) against the same call over gRPC (a plain stub), one call
at a time, on one server process of the local stack. Prints; asserts nothing.

    python -m benchmarks.rest [--calls 300]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

import aiohttp
import grpc
from google.protobuf import empty_pb2

from benchmarks.downstream import Names, remove
from benchmarks.support import free_port
from eventstore.config import CassandraSettings, KafkaSettings, OpenSearchSettings
from eventstore.migrate import migrate
from eventstore.v1 import eventstore_pb2 as pb
from eventstore.v1 import eventstore_pb2_grpc as pb_grpc


async def timed(calls: int, one: Callable[[int], Awaitable[None]]) -> list[float]:
    for i in range(20):  # warm-up: connections, caches, the first prepared statements
        await one(-i - 1)
    samples = []
    for i in range(calls):
        started = time.perf_counter()
        await one(i)
        samples.append(time.perf_counter() - started)
    return samples


def summary(samples: list[float]) -> str:
    q = statistics.quantiles(sorted(samples), n=100, method="inclusive")
    return f"p50 {q[49] * 1000:6.2f} ms  p99 {q[98] * 1000:6.2f} ms"


async def run(calls: int, names: Names) -> None:
    env = names.env()
    await migrate(
        CassandraSettings(keyspace=names.keyspace),
        KafkaSettings(
            topic_prefix=names.topic_prefix,
            dead_letter_topic=env["EVENTSTORE_KAFKA_DEAD_LETTER_TOPIC"],
        ),
        OpenSearchSettings(index_prefix=names.index_prefix),
    )
    grpc_port, http_port = free_port(), free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "eventstore.server",
        env={
            **os.environ,
            **env,
            "EVENTSTORE_LISTEN": f"127.0.0.1:{grpc_port}",
            "EVENTSTORE_HTTP_LISTEN": f"127.0.0.1:{http_port}",
            "EVENTSTORE_AUTH_DISABLED": "true",
            "EVENTSTORE_PROCESSES": "1",
            "EVENTSTORE_LOG_LEVEL": "WARNING",
        },
    )
    try:
        async with (
            aiohttp.ClientSession(f"http://127.0.0.1:{http_port}") as http,
            grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
        ):
            stub = pb_grpc.EventStoreStub(channel)
            aggregate = f"bench-{uuid.uuid4()}"
            data = base64.b64encode(b'{"amount": 42, "currency": "EUR"}').decode()
            body = {"aggregateType": "Bench", "expectedVersion": {"any": {}}}
            deadline = time.monotonic() + 60
            while True:  # ready: the append went through
                try:
                    events = [{"eventType": "Tick", "data": data}]
                    async with http.post(
                        f"/v1/aggregates/{aggregate}/events", json={**body, "events": events}
                    ) as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not become ready in 60 s")
                await asyncio.sleep(0.5)

            async def rest_get(_: int) -> None:
                async with http.get(f"/v1/aggregates/{aggregate}") as response:
                    assert response.status == 200
                    await response.json()

            async def grpc_get(_: int) -> None:
                await stub.GetAggregate(pb.GetAggregateRequest(aggregate_id=aggregate))

            async def rest_append(_: int) -> None:
                events = [{"eventType": "Tick", "data": data}]
                async with http.post(
                    f"/v1/aggregates/{aggregate}/events", json={**body, "events": events}
                ) as response:
                    assert response.status == 200
                    await response.json()

            async def grpc_append(_: int) -> None:
                await stub.Append(
                    pb.AppendRequest(
                        aggregate_id=aggregate,
                        aggregate_type="Bench",
                        expected_version=pb.ExpectedVersion(any=empty_pb2.Empty()),
                        events=[pb.EventData(event_type="Tick", data=base64.b64decode(data))],
                    )
                )

            print(f"{calls} sequential calls each, one server process, loopback:")
            for name, one in (
                ("GetAggregate gRPC", grpc_get),
                ("GetAggregate REST", rest_get),
                ("Append       gRPC", grpc_append),
                ("Append       REST", rest_append),
            ):
                print(f"  {name}  {summary(await timed(calls, one))}", flush=True)
    finally:
        server.terminate()
        await server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    names = Names.fresh()
    try:
        asyncio.run(run(args.calls, names))
    finally:
        remove(names)


if __name__ == "__main__":
    main()
