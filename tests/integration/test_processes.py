"""EVENTSTORE_PROCESSES=2: `python -m eventstore.server` supervises two full servers on one port.
Both serve, what they accept reaches Kafka, SIGTERM stops all of them, a killed worker is
restarted while the other serves on and publishes what the dead one had committed, and a
worker's configuration error stops the whole server (no restart loop)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from eventstore.client import Event, EventStoreClient, RetryPolicy, UnavailableError
from eventstore.config import ServerSettings
from tests.integration.test_publication import server_process
from tests.integration.test_restart import ServerProcess, free_port
from tests.support import decode, read_topic, unique

pytestmark = pytest.mark.integration


def log_events(proc: ServerProcess, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of the supervisor and its workers saying `event`."""
    found = []
    for line in proc.log.read_text().splitlines():
        with suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("event") == event:
                found.append(record)
    return found


async def until(what: str, proc: ServerProcess, condition: Any, within_s: float = 60) -> None:
    """Generous bounds: the workers start in seconds, but the machine may be busy."""
    async with asyncio.timeout(within_s):
        while not condition():
            assert proc.process is not None
            assert proc.process.returncode is None, f"{what}: exited\n{proc.log.read_text()}"
            await asyncio.sleep(0.1)


def ready_workers(proc: ServerProcess) -> dict[int, int]:
    """pid by worker index, of the workers that said they are ready (the latest per index)."""
    return {e["worker"]: e["pid"] for e in log_events(proc, "eventstore server ready")}


def children(pid: int) -> set[int]:
    return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def alive(pid: int) -> bool:
    """Running (a zombie has exited: whoever adopted it has not reaped it yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def connections_by_pid(port: int, pids: Iterable[int]) -> dict[int, int]:
    """How many established connections to `port` each process holds (the kernel's view:
    /proc/net/tcp* for the sockets, each process's descriptors for who holds them). gRPC
    listens on IPv6 sockets, IPv4 clients appearing as v4-mapped addresses."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if int(local.rpartition(":")[2], 16) == port and state == "01":  # ESTABLISHED
                inodes.add(f"socket:[{inode}]")
    counts = {}
    for pid in pids:
        held = 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with suppress(OSError):
                held += os.readlink(fd) in inodes
        counts[pid] = held
    return counts


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


@pytest.fixture
async def two_processes(
    server_settings: ServerSettings, tmp_path: Path
) -> AsyncIterator[ServerProcess]:
    proc = server_process(server_settings, tmp_path)
    proc.env["EVENTSTORE_PROCESSES"] = "2"
    yield proc
    if proc.process is not None and proc.process.returncode is None:
        pids = children(proc.process.pid)
        await proc.kill()
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def start(proc: ServerProcess) -> dict[int, int]:
    """Start the supervisor; once both workers are ready, their pids by index."""
    await proc.start(wait_until_serving=False)
    assert proc.process is not None
    await until("both workers ready", proc, lambda: len(ready_workers(proc)) == 2)
    workers = ready_workers(proc)
    assert set(workers.values()) == children(proc.process.pid)
    return workers


async def test_two_processes_share_the_port_and_stop_together_on_sigterm(
    two_processes: ServerProcess, server_settings: ServerSettings
) -> None:
    proc = two_processes
    proc.env["EVENTSTORE_LISTEN"] = "127.0.0.1:0"  # the supervisor picks one port for both
    metrics_port = free_port()
    proc.env["EVENTSTORE_METRICS_PORT"] = str(metrics_port)
    workers = await start(proc)
    assert len(set(workers.values())) == 2
    (supervisor,) = log_events(proc, "starting worker processes")
    proc.address = supervisor["address"]
    port = int(proc.address.rpartition(":")[2])
    assert port != 0
    assert {e["address"] for e in log_events(proc, "eventstore server ready")} == {proc.address}

    aggregates = [unique("spread") for _ in range(16)]
    async with AsyncExitStack() as stack:
        # A channel of its own per client (no subchannel shared): a connection each, which the
        # kernel hands to either worker.
        clients = [
            await stack.enter_async_context(
                EventStoreClient(
                    proc.address,
                    channel=grpc.aio.insecure_channel(
                        proc.address, options=[("grpc.use_local_subchannel_pool", 1)]
                    ),
                )
            )
            for _ in aggregates
        ]
        for client, aggregate in zip(clients, aggregates, strict=True):
            await client.append(aggregate, "Spread", [Event("Spread", {"a": aggregate})], 0)
        served = connections_by_pid(port, workers.values())
        assert sum(served.values()) == len(clients), served
        assert all(served.values()), f"one worker got every connection: {served}"
        for client, aggregate in zip(clients, aggregates, strict=True):
            stored = await client.read_all(aggregate)
            assert [json.loads(e.data) for e in stored] == [{"a": aggregate}]

    topic = server_settings.kafka.topic("Spread")
    records = await asyncio.to_thread(
        read_topic, server_settings.kafka.bootstrap, topic, len(aggregates)
    )
    assert sorted({decode(r).aggregate_id for r in records}) == sorted(aggregates)
    # One endpoint for both workers' metrics.
    metrics = await asyncio.to_thread(scrape, metrics_port)
    assert f'eventstore_rpc_requests_total{{code="OK",method="Append"}} {len(aggregates)}.0' in (
        metrics
    )

    assert proc.process is not None
    proc.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.process.wait(), 30) == 0
    assert not [pid for pid in workers.values() if alive(pid)], "orphaned workers"
    assert {e["worker"] for e in log_events(proc, "stopped") if "worker" in e} == {0, 1}
    assert len(log_events(proc, "worker started")) == 2, "no worker was restarted"


async def test_a_killed_worker_is_restarted_and_what_it_committed_is_published(
    two_processes: ServerProcess, server_settings: ServerSettings
) -> None:
    proc = two_processes
    # Whichever worker takes the append kills itself (SIGKILL) right after the commit, before
    # anything is published: only another process can publish those events.
    proc.env["EVENTSTORE_FAILPOINTS"] = "append.after_commit=crash"
    workers = await start(proc)
    aggregate = unique("killed")
    events = [Event("Committed", {"i": i}) for i in range(3)]
    async with EventStoreClient(proc.address, retry=RetryPolicy(attempts=1)) as client:
        with pytest.raises(UnavailableError):
            await client.append(aggregate, "Killed", events, expected=0)
    assert proc.process is not None
    await until("the death seen", proc, lambda: log_events(proc, "worker died; restarting it"))
    (death,) = log_events(proc, "worker died; restarting it")
    assert death["status"] == -signal.SIGKILL
    assert death["pid"] == workers[death["worker"]]

    # The other worker serves on meanwhile: the port takes new connections and reads work.
    async with EventStoreClient(proc.address) as client:
        stored = await client.read_all(aggregate)
    assert [e.event_id for e in stored] == [e.event_id for e in events], "it was committed"

    await until(
        "the dead worker replaced",
        proc,
        lambda: ready_workers(proc)[death["worker"]] != death["pid"],
    )
    assert not alive(death["pid"])
    assert children(proc.process.pid) == set(ready_workers(proc).values())
    assert len(children(proc.process.pid)) == 2

    topic = server_settings.kafka.topic("Killed")
    records = await asyncio.to_thread(read_topic, server_settings.kafka.bootstrap, topic, 3)
    assert {decode(r).event_id for r in records} == {str(e.event_id) for e in events}

    async with grpc.aio.insecure_channel(proc.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    proc.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.process.wait(), 30) == 0


async def test_a_workers_configuration_error_stops_the_server_without_restarts(
    two_processes: ServerProcess, tmp_path: Path
) -> None:
    proc = two_processes
    # The supervisor checks the settings; the workers read the file, and refuse this one.
    permissions = tmp_path / "permissions.yaml"
    permissions.write_text("principals: [not, a, mapping]\n")
    proc.env.pop("EVENTSTORE_AUTH_DISABLED")
    proc.env["EVENTSTORE_PERMISSIONS_FILE"] = str(permissions)
    await proc.start(wait_until_serving=False)
    assert proc.process is not None
    assert await asyncio.wait_for(proc.process.wait(), 30) == 2
    assert len(log_events(proc, "worker started")) == 2, proc.log.read_text()
    assert "EVENTSTORE_PERMISSIONS_FILE" in proc.log.read_text()


async def test_workers_stop_when_the_supervisor_is_killed(two_processes: ServerProcess) -> None:
    """No orphans serving on, unsupervised, after a SIGKILL of the supervisor (the kernel
    sends each worker SIGTERM: PR_SET_PDEATHSIG)."""
    proc = two_processes
    workers = await start(proc)
    await proc.kill()
    await until_gone(workers.values(), proc)


async def until_gone(pids: Iterable[int], proc: ServerProcess, within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    while running := [pid for pid in pids if alive(pid)]:
        if time.monotonic() > deadline:
            for pid in running:
                os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"orphaned workers {running}\n{proc.log.read_text()}")
        await asyncio.sleep(0.1)


async def test_a_single_server_refuses_a_port_another_server_holds(
    server_settings: ServerSettings,
) -> None:
    """Only workers of one supervisor share a port: a lone server on a port in use must fail
    to start, not share the port with the other and get some of its connections (seen: a
    restarted server of one test received connections meant for another's)."""
    from eventstore.server import StartupFailed, listen

    first = await listen(server_settings)
    try:
        taken = server_settings.model_copy(update={"listen": f"127.0.0.1:{first.port}"})
        with pytest.raises(StartupFailed, match="cannot listen"):
            await listen(taken)
    finally:
        await first.stop(0)
