"""Fault tests on the three-node cluster (devstack.cluster): its nodes are these tests' to kill,
pause and restart, so they run one after another on one xdist worker, and each leaves every
node up for the next. Each test gets its own keyspace (replication factor 3), topics
(three replicas, `min.insync.replicas=2`) and index prefix (OpenSearch stays the one node)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cassandra.cluster import Cluster

from devstack import cluster, stack
from devstack.processes import pid_alive
from devstack.service import Service
from eventstore.config import CassandraSettings, KafkaSettings, OpenSearchSettings
from eventstore.migrate import migrate
from tests.support import unique


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith("tests/cluster/"):
            item.add_marker(pytest.mark.xdist_group("cluster"))
            # Room for two restarts at RESTART_TIMEOUT_S beside the load and the checks.
            item.add_marker(pytest.mark.timeout(1500))


#: How long a killed node may take to answer again. A restart takes 30-60 s on an idle
#: two-core machine, but the node starts beside the write load and five other JVMs: in one
#: CI run a Cassandra node restarted together with a Kafka broker took 4 min (109 s of
#: start-up before its commit log, 43 s replaying 91,240 mutations, 89 s to rejoin), over
#: `up`'s default 240 s. What the tests prove is that nothing is lost meanwhile, not how fast
#: a starved JVM starts.
RESTART_TIMEOUT_S = 600.0

#: One line per fault, printed at the end of the session (each test's output is captured).
REPORTS: list[str] = []


def report(summary: dict[str, object]) -> None:
    line = json.dumps(summary)
    print(f"\n[fault report] {line}")
    REPORTS.append(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORTS:
        terminalreporter.section("fault reports")
        for line in REPORTS:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def cluster_up() -> None:
    """Start the cluster unless it runs (idempotent; `make test` starts it beforehand)."""
    stack.up(["cluster"])


class Nodes:
    """Kill, pause and restart the cluster's nodes, by the pids the stack recorded."""

    def __init__(self) -> None:
        self._paused: set[int] = set()

    @staticmethod
    def pid(service: Service) -> int:
        pid = service.running_pid()
        assert pid is not None, f"{service.name} is not running"
        return pid

    def kill(self, service: Service) -> None:
        pid = self.pid(service)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while pid_alive(pid):
            assert time.monotonic() < deadline, f"{service.name} (pid {pid}) survived SIGKILL"
            time.sleep(0.1)

    def pause(self, service: Service) -> None:
        pid = self.pid(service)
        os.kill(pid, signal.SIGSTOP)
        self._paused.add(pid)

    def resume(self, service: Service) -> None:
        pid = self.pid(service)
        os.kill(pid, signal.SIGCONT)
        self._paused.discard(pid)

    async def restart(self, *services: Service) -> float:
        """Start the named nodes again and wait until the whole cluster has settled; the
        seconds it took."""
        started = time.monotonic()
        names = [s.name for s in services]
        await asyncio.to_thread(stack.up, names, RESTART_TIMEOUT_S)
        await self.settled()
        return time.monotonic() - started

    @staticmethod
    async def settled(timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while not await asyncio.to_thread(cluster.settled):
            assert time.monotonic() < deadline, "the cluster did not settle again"
            await asyncio.sleep(1)

    def heal(self) -> None:
        for pid in list(self._paused):
            if pid_alive(pid):
                os.kill(pid, signal.SIGCONT)
        self._paused.clear()
        stack.up(["cluster"], RESTART_TIMEOUT_S)


@pytest.fixture
def nodes(cluster_up: None) -> Iterator[Nodes]:
    control = Nodes()
    yield control
    control.heal()  # whatever the test did, the next one starts with every node up


@dataclass(frozen=True)
class ClusterSettings:
    cassandra: CassandraSettings
    kafka: KafkaSettings
    opensearch: OpenSearchSettings

    def env(self) -> dict[str, str]:
        """The server's and indexer's environment for these settings."""
        return {
            **os.environ,
            "EVENTSTORE_CASSANDRA_HOSTS": self.cassandra.hosts,
            "EVENTSTORE_CASSANDRA_KEYSPACE": self.cassandra.keyspace,
            "EVENTSTORE_CASSANDRA_REPLICATION_FACTOR": "3",
            "EVENTSTORE_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
            "EVENTSTORE_KAFKA_TOPIC_PREFIX": self.kafka.topic_prefix,
            "EVENTSTORE_KAFKA_REPLICATION_FACTOR": "3",
            "EVENTSTORE_KAFKA_DEAD_LETTER_TOPIC": self.kafka.dead_letter_topic,
            "EVENTSTORE_OPENSEARCH_URL": self.opensearch.url,
            "EVENTSTORE_OPENSEARCH_INDEX_PREFIX": self.opensearch.index_prefix,
            "EVENTSTORE_AUTH_DISABLED": "true",
        }


@pytest.fixture(scope="session")
def cluster_keyspace(cluster_up: None) -> Iterator[str]:
    """One keyspace for the session: each schema change is slow on three nodes (seconds per
    table), and the tests run one at a time, stop their servers, and write distinct aggregates."""
    name = unique("faults").replace("-", "_")
    yield name
    _drop_keyspace(name)  # the cluster keeps its data between runs; tables cost every node heap


@pytest.fixture
async def cluster_settings(cluster_keyspace: str) -> ClusterSettings:
    name = unique("faults")
    settings = ClusterSettings(
        CassandraSettings(
            hosts=cluster.CASSANDRA_HOSTS, keyspace=cluster_keyspace, replication_factor=3
        ),
        KafkaSettings(
            bootstrap=cluster.KAFKA_BOOTSTRAP,
            topic_prefix=f"{name}.",
            replication_factor=3,
            dead_letter_topic=f"{name}.dead-letter",
        ),
        OpenSearchSettings(index_prefix=name),
    )
    await migrate(settings.cassandra, settings.kafka, settings.opensearch)
    # A node killed before the keyspace's schema reached it was seen never to pull it (its
    # peers kept other schema versions): no fault before every node has every table.
    deadline = time.monotonic() + 120
    while not await asyncio.to_thread(cluster.has_keyspace, cluster_keyspace):
        assert time.monotonic() < deadline, f"keyspace {cluster_keyspace} did not reach every node"
        await asyncio.sleep(1)
    return settings


def _drop_keyspace(name: str) -> None:
    with Cluster(list(cluster.ADDRESSES), protocol_version=5) as session_cluster:
        session_cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=60)
