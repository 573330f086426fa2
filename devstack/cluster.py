"""The fault-test cluster: three Cassandra nodes and three Kafka brokers (one KRaft quorum) on
127.0.0.2-4, one loopback address per node on the standard ports, beside the one-node stack on
127.0.0.1 (which every other test shares and none may kill).

Replicated as production is: the keyspace with replication factor 3, writes at QUORUM and
Paxos at SERIAL; topics with three replicas, `min.insync.replicas=2` and `acks=all`. The
nodes are ours to kill: tests SIGKILL, SIGSTOP and restart them one at a time.
"""

from __future__ import annotations

import base64
import functools
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from devstack import cassandra, kafka
from devstack.locations import state_dir
from devstack.service import Service
from devstack.templates import render

NODES = 3
ADDRESSES = tuple(f"127.0.0.{n + 2}" for n in range(NODES))

#: What clients are given: every node, so that losing one loses no entry point.
CASSANDRA_HOSTS = ",".join(f"{a}:9042" for a in ADDRESSES)
KAFKA_BOOTSTRAP = ",".join(f"{a}:9092" for a in ADDRESSES)

#: Small heaps: six JVMs beside the one-node stack on a 24 GiB, 2-core machine (a trial run
#: measured 610-690 MB resident per Cassandra node, 360-390 MB per broker).
_CASSANDRA_HEAP = ("256m", "512m")
_KAFKA_HEAP = "384m"


def balanced_tokens(nodes: int) -> list[int]:
    """One Murmur3 token per node, evenly spaced over [-2**63, 2**63)."""
    return [-(2**63) + i * (2**64 // nodes) for i in range(nodes)]


def _cassandra_node(index: int) -> Service:
    node = cassandra.Node(
        address=ADDRESSES[index],
        seeds=f"{ADDRESSES[0]}:7000",
        cluster_name="eventstore-faults",
        heap=_CASSANDRA_HEAP,
        initial_token=balanced_tokens(NODES)[index],
    )
    return Service(
        f"cluster-cassandra-{index + 1}",
        "",
        f"{node.address}:9042",
        (9042, 7000),
        cassandra.answers,
        functools.partial(cassandra.prepare, node=node),
        system_log="system.log",
        host=node.address,
    )


def kafka_cluster_id() -> str:
    """One id for the three brokers' storage, made once (Kafka's own format: a random UUID in
    URL-safe base64 without padding)."""
    path = state_dir() / "cluster-kafka.id"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        raw = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        path.write_text(raw)
    return path.read_text().strip()


def broker_properties(home: Path, index: int) -> str:
    voters = ",".join(f"{n + 1}@{a}:9093" for n, a in enumerate(ADDRESSES))
    return render(
        "kafka-cluster.properties",
        home=home,
        node_id=index + 1,
        voters=voters,
        address=ADDRESSES[index],
    )


def _prepare_broker(home: Path, java: Path, index: int) -> list[str]:
    properties = broker_properties(home, index)
    return kafka.command(home, java, properties, kafka_cluster_id(), heap=_KAFKA_HEAP)


def _kafka_broker(index: int) -> Service:
    address = ADDRESSES[index]
    return Service(
        f"cluster-kafka-{index + 1}",
        "",
        f"{address}:9092",
        (9092, 9093),
        kafka.answers,
        functools.partial(_prepare_broker, index=index),
        system_log="server.log",
        host=address,
    )


CASSANDRA_NODES = [_cassandra_node(i) for i in range(NODES)]
KAFKA_BROKERS = [_kafka_broker(i) for i in range(NODES)]
SERVICES = [*CASSANDRA_NODES, *KAFKA_BROKERS]


def settled() -> bool:
    """Every Cassandra node up in the ring as every node sees it, and every broker registered:
    what the fault tests need before they write (a node answering CQL alone is not in the
    ring). Schema versions are not compared: after a node's restart their digests were seen
    to differ for good with the same tables on every node; `has_keyspace` checks what a test
    needs instead."""
    return all(_sees_whole_ring(address) for address in ADDRESSES) and _brokers_registered()


def has_keyspace(keyspace: str) -> bool:
    """Every node knows the keyspace and the same tables of it (its schema reached each)."""
    counts = {_ask(address, _count_tables, keyspace) for address in ADDRESSES}
    return len(counts) == 1 and (counts.pop() or 0) > 0


def _sees_whole_ring(address: str) -> bool:
    return bool(_ask(address, _peers_up))


def _peers_up(session: Any, _: str) -> bool:
    """This node answers, and gossip tells it every node is NORMAL and serving CQL (nodetool
    would say as much, but needs JMX, which the stack does not open)."""
    rows = list(session.execute("SELECT status_with_port, rpc_ready FROM system_views.gossip_info"))
    return len(rows) == NODES and all(
        (row.status_with_port or "").startswith("NORMAL") and row.rpc_ready == "true"
        for row in rows
    )


def _count_tables(session: Any, keyspace: str) -> int:
    rows = session.execute(
        "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s",
        (keyspace,),
        timeout=5,
    )
    return len(list(rows))


def _ask(address: str, question: Callable[[Any, str], Any], argument: str = "") -> Any:
    """`question(session, argument)` asked of the node at `address` only; None if it cannot
    answer."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import WhiteListRoundRobinPolicy

    profile = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy([address]))
    cluster = Cluster(
        [address],
        protocol_version=5,
        connect_timeout=5,
        control_connection_timeout=5,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
    )
    try:
        return question(cluster.connect(), argument)
    except Exception:  # noqa: BLE001 - not answering (yet)
        return None
    finally:
        cluster.shutdown()


def _brokers_registered() -> bool:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": KAFKA_BOOTSTRAP, "log_level": 0})
    try:
        return len(admin.list_topics(timeout=5).brokers) == NODES
    except Exception:  # noqa: BLE001 - not settled yet
        return False


def is_cluster(services: Sequence[Service]) -> bool:
    names = {s.name for s in services}
    return all(s.name in names for s in SERVICES)
