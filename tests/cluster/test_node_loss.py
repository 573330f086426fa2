"""Faults under write load on the three-node cluster (issue #16), each proven with the history
checker: every acknowledged event stored once at the version acknowledged, versions without
gaps, nothing refused stored, Kafka holding every stored event in order, OpenSearch one
document per event. Each test prints its report (run with -s to see it)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from devstack import cluster
from devstack.service import Service
from tests.cluster.conftest import ClusterSettings, Nodes, report
from tests.cluster.load import AGGREGATE_TYPE, Load, indexed, published, stored
from tests.history import check
from tests.integration.test_indexer import IndexerProcess
from tests.integration.test_restart import ServerProcess, free_port

pytestmark = pytest.mark.integration


class Servers:
    """Server replicas of one keyspace, each its own process on its own port."""

    def __init__(self, settings: ClusterSettings, logs: Path) -> None:
        self._settings = settings
        self._logs = logs
        self.replicas: list[ServerProcess] = []

    async def start(self, count: int) -> list[str]:
        for _ in range(count):
            replica = ServerProcess(
                self._settings.cassandra,
                free_port(),
                self._logs / f"server{len(self.replicas)}.log",
            )
            replica.env = {**replica.env, **self._settings.env()}
            self.replicas.append(replica)
        await asyncio.gather(*(replica.start() for replica in self.replicas))
        return [replica.address for replica in self.replicas]

    async def stop(self) -> None:
        await asyncio.gather(*(replica.stop() for replica in self.replicas))


@pytest.fixture
async def servers(cluster_settings: ClusterSettings, tmp_path: Path) -> AsyncIterator[Servers]:
    running = Servers(cluster_settings, tmp_path)
    yield running
    await running.stop()


@pytest.fixture
async def indexer(cluster_settings: ClusterSettings, tmp_path: Path) -> AsyncIterator[None]:
    process = IndexerProcess(
        cluster_settings.kafka, cluster_settings.opensearch, tmp_path / "indexer.log"
    )
    await process.start()
    yield
    await process.kill()


async def run_fault(
    name: str,
    settings: ClusterSettings,
    targets: list[str],
    fault: Callable[[], Awaitable[None]],
    before_s: float = 5.0,
    after_s: float = 5.0,
) -> dict[str, object]:
    """Write for `before_s`, inject the fault (which returns once it is over), write for
    `after_s` more, then check everything the history says against the three stores."""
    async with Load(targets) as load:
        await asyncio.sleep(before_s)
        await fault()
        await asyncio.sleep(after_s)
    summary: dict[str, object] = {"fault": name, **load.history.summary(load.started, load.ended)}
    held = await stored(settings.cassandra, load.aggregates)
    total = sum(len(events) for events in held.values())
    in_kafka = await asyncio.to_thread(published, settings.kafka, total)
    in_index = await indexed(settings.opensearch, load.aggregates, total)
    problems = check(load.history, held, in_kafka, in_index)
    summary["stored_events"] = total
    summary["verdict"] = "ok" if not problems else f"{len(problems)} problems"
    # Statuses of client calls that failed after the client's own retries (the writer then
    # sent the same events again).
    summary["failed_client_calls"] = dict(
        Counter(op.error.partition(":")[0] for op in load.history.ops if op.attempts > 1)
    )
    report(summary)
    assert not problems, "\n".join(problems[:30])
    return summary


async def test_sigkill_of_one_cassandra_node_loses_nothing_and_fails_no_append(
    nodes: Nodes, cluster_settings: ClusterSettings, servers: Servers, indexer: None
) -> None:
    targets = await servers.start(1)
    victim = cluster.CASSANDRA_NODES[1]

    async def kill_and_restart() -> None:
        nodes.kill(victim)
        await asyncio.sleep(8)  # writing with two of three replicas
        await nodes.restart(victim)

    summary = await run_fault("sigkill cassandra node", cluster_settings, targets, kill_and_restart)
    assert summary["failed"] == 0
    assert summary["unknown"] == 0
    assert summary["failed_client_calls"] == {}


async def test_a_hung_cassandra_node_loses_nothing_and_fails_no_append(
    nodes: Nodes, cluster_settings: ClusterSettings, servers: Servers, indexer: None
) -> None:
    """SIGSTOP: the node keeps its sockets open but answers nothing (a GC pause, a stuck
    disk), which a dead node's refused connections do not show."""
    targets = await servers.start(1)
    victim = cluster.CASSANDRA_NODES[2]

    async def hang() -> None:
        nodes.pause(victim)
        await asyncio.sleep(20)
        nodes.resume(victim)
        await nodes.settled()

    summary = await run_fault("sigstop cassandra node 20 s", cluster_settings, targets, hang)
    assert summary["failed"] == 0
    assert summary["unknown"] == 0


async def test_sigkill_of_the_busiest_kafka_leader_loses_nothing(
    nodes: Nodes, cluster_settings: ClusterSettings, servers: Servers, indexer: None
) -> None:
    targets = await servers.start(1)

    async def kill_leader() -> None:
        victim = await asyncio.to_thread(
            busiest_leader, cluster_settings.kafka.topic_prefix + AGGREGATE_TYPE
        )
        nodes.kill(victim)
        await asyncio.sleep(8)
        await nodes.restart(victim)

    summary = await run_fault("sigkill kafka leader", cluster_settings, targets, kill_leader)
    assert summary["failed"] == 0
    assert summary["unknown"] == 0
    assert summary["failed_client_calls"] == {}


def busiest_leader(topic: str) -> Service:
    """The broker leading most partitions of `topic` (node ids are 1-3, in address order)."""
    admin = AdminClient({"bootstrap.servers": cluster.KAFKA_BOOTSTRAP, "log_level": 0})
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions.values()
    leaders = Counter(p.leader for p in partitions)
    leader, _ = leaders.most_common(1)[0]
    return cluster.KAFKA_BROKERS[leader - 1]


async def test_sigkill_of_one_server_replica_and_a_rolling_restart_lose_nothing(
    nodes: Nodes, cluster_settings: ClusterSettings, servers: Servers, indexer: None
) -> None:
    """Three replicas behind one client target (round robin): one is killed mid-load and
    started again, then each is stopped (SIGTERM) and started in turn, as a rollout does."""
    addresses = await servers.start(3)
    target = "ipv4:" + ",".join(addresses)

    async def kill_then_roll() -> None:
        await servers.replicas[0].kill()
        await asyncio.sleep(5)
        await servers.replicas[0].start()
        for replica in servers.replicas:
            await replica.stop()
            await replica.start()
            await asyncio.sleep(2)

    summary = await run_fault("server replicas", cluster_settings, [target], kill_then_roll)
    assert summary["failed"] == 0
    assert summary["unknown"] == 0
    # A stopping replica sends GOAWAY (its calls move to the others without spending a try),
    # and the client redials a restarted one within 2 s: no append needs a second call.
    assert summary["failed_client_calls"] == {}


async def test_a_cassandra_node_a_kafka_leader_and_a_server_replica_lost_at_once(
    nodes: Nodes, cluster_settings: ClusterSettings, servers: Servers, indexer: None
) -> None:
    """The three kinds of node lost in the same second (a rack or a host going down), under
    load, then brought back one by one."""
    addresses = await servers.start(2)
    target = "ipv4:" + ",".join(addresses)
    cassandra_victim = cluster.CASSANDRA_NODES[0]

    async def lose_three() -> None:
        kafka_victim = await asyncio.to_thread(
            busiest_leader, cluster_settings.kafka.topic_prefix + AGGREGATE_TYPE
        )
        nodes.kill(cassandra_victim)
        nodes.kill(kafka_victim)
        await servers.replicas[0].kill()
        await asyncio.sleep(8)
        await servers.replicas[0].start()
        await nodes.restart(cassandra_victim, kafka_victim)

    summary = await run_fault(
        "cassandra + kafka + server at once", cluster_settings, [target], lose_three
    )
    assert summary["failed"] == 0
    assert summary["unknown"] == 0
    assert summary["failed_client_calls"] == {}


async def test_two_cassandra_nodes_down_refuses_appends_then_recovers(
    nodes: Nodes, cluster_settings: ClusterSettings, servers: Servers, indexer: None
) -> None:
    """Without a quorum nothing may be acknowledged; with it back, appends succeed again."""
    targets = await servers.start(1)
    first, second = cluster.CASSANDRA_NODES[1], cluster.CASSANDRA_NODES[2]
    outage: dict[str, float] = {}

    async def lose_quorum() -> None:
        nodes.kill(first)
        nodes.kill(second)
        outage["from"] = time.monotonic()
        await asyncio.sleep(10)
        outage["to"] = time.monotonic()
        await nodes.restart(first, second)

    async with Load(targets) as load:
        await asyncio.sleep(3)
        await lose_quorum()
        await asyncio.sleep(5)
    acked_during = [
        op
        for op in load.history.ops
        if op.outcome == "ok" and outage["from"] + 1 < op.ended < outage["to"]
    ]
    # An append that began before the kill may still be acknowledged just after it (a second);
    # none that ended while two of three replicas were gone.
    assert not acked_during, [(op.aggregate_id, op.first_version) for op in acked_during]
    acked_after = [
        op for op in load.history.ops if op.outcome == "ok" and op.started > outage["to"]
    ]
    assert acked_after, "appends did not succeed again once the quorum was back"
    # What the clients were told meanwhile: retryable statuses, never INTERNAL or UNKNOWN.
    told = Counter(op.error.partition(":")[0] for op in load.history.ops if op.error)
    summary = load.history.summary(load.started, load.ended)
    report({"fault": "two cassandra nodes down", **summary, "told": dict(told)})
    assert set(told) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED"}, told
    held = await stored(cluster_settings.cassandra, load.aggregates)
    problems = check(load.history, held)
    assert not problems, "\n".join(problems[:30])
