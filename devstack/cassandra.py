"""Cassandra from its jars: the stack's one node on 127.0.0.1:9042 (TLS optional on the same
port), or a node of the three-node cluster (`devstack.cluster`), one loopback address each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from devstack.downloads import resolve_classpath
from devstack.processes import port_open
from devstack.service import Service
from devstack.templates import render
from devstack.tls import KEYSTORE_PASSWORD, Pki, pki

VERSION = "5.0.9"

# The flags of Cassandra's own jvm17-server.options.
_OPENS = [
    "java.base/java.lang",
    "java.base/java.lang.module",
    "java.base/java.lang.ref",
    "java.base/java.lang.reflect",
    "java.base/java.io",
    "java.base/java.nio",
    "java.base/java.math",
    "java.base/java.net",
    "java.base/java.util",
    "java.base/java.util.concurrent",
    "java.base/java.util.concurrent.atomic",
    "java.base/jdk.internal.loader",
    "java.base/jdk.internal.math",
    "java.base/jdk.internal.module",
    "java.base/jdk.internal.ref",
    "java.base/jdk.internal.reflect",
    "java.base/jdk.internal.util.jar",
    "java.base/sun.nio.ch",
    "jdk.management/com.sun.management.internal",
]
_EXPORTS = [
    "java.base/jdk.internal.misc",
    "java.base/java.lang.ref",
    "java.management.rmi/com.sun.jmx.remote.internal.rmi",
    "java.management/com.sun.jmx.remote.security",
    "java.rmi/sun.rmi.registry",
    "java.rmi/sun.rmi.server",
    "java.sql/java.sql",
    "jdk.unsupported/sun.misc",
]


@dataclass(frozen=True)
class Node:
    """Where one node listens and how it joins its ring."""

    address: str
    seeds: str
    cluster_name: str
    heap: tuple[str, str]
    """-Xms, -Xmx"""
    initial_token: int | None = None
    """Fixed for cluster nodes: with one token each and no bootstrap (so that three nodes
    started together are all NORMAL in seconds), the ring is only balanced if we choose it."""


SINGLE = Node("127.0.0.1", "127.0.0.1:7000", "eventstore-dev", ("512m", "2g"))


def cassandra_yaml(home: Path, tls: Pki, node: Node) -> str:
    token_lines = ""
    if node.initial_token is not None:
        token_lines = f"initial_token: {node.initial_token}\nauto_bootstrap: false"
    return render(
        "cassandra.yaml",
        home=home,
        keystore=tls.keystore,
        keystore_password=KEYSTORE_PASSWORD,
        address=node.address,
        seeds=node.seeds,
        cluster_name=node.cluster_name,
        token_lines=token_lines,
    )


def prepare(home: Path, java: Path, node: Node = SINGLE) -> list[str]:
    jars = resolve_classpath("cassandra", VERSION)
    tls = pki()
    for sub in ("data", "commitlog", "saved_caches", "hints", "cdc_raw", "logs", "tmp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    (home / "cassandra.yaml").write_text(cassandra_yaml(home, tls, node))
    (home / "logback.xml").write_text(render("cassandra-logback.xml", home=home))
    return [
        str(java / "bin" / "java"),
        f"-Xms{node.heap[0]}",
        f"-Xmx{node.heap[1]}",
        "-Xss256k",
        "-XX:+UseG1GC",
        "-Djdk.attach.allowAttachSelf=true",
        "-Dio.netty.tryReflectionSetAccessible=true",
        *[arg for m in _EXPORTS for arg in ("--add-exports", f"{m}=ALL-UNNAMED")],
        *[arg for m in _OPENS for arg in ("--add-opens", f"{m}=ALL-UNNAMED")],
        f"-Dcassandra.config=file://{home / 'cassandra.yaml'}",
        "-Dcassandra-foreground=yes",
        f"-Dcassandra.storagedir={home}",
        f"-Dcassandra.logdir={home / 'logs'}",
        f"-Dlogback.configurationFile={home / 'logback.xml'}",
        f"-Djava.io.tmpdir={home / 'tmp'}",
        "-Dcassandra.skip_wait_for_gossip_to_settle=0",
        "-Dcassandra.load_ring_state=false",
        # Not -Dcassandra.unsafesystem=true: it skips syncing the system keyspaces, and a node
        # killed with SIGKILL (as `down` does after its grace, and the fault tests on purpose)
        # came back without the keyspaces created before the kill.
        "-cp",
        f"{jars}/*",
        "org.apache.cassandra.service.CassandraDaemon",
    ]


def answers(hosts: str) -> bool:
    host, _, port = hosts.split(",")[0].strip().partition(":")
    if not port_open(host, int(port or 9042)):
        return False
    # The venv's driver, imported late: `down` runs on the system Python, which lacks it.
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import WhiteListRoundRobinPolicy

    # Asked of this node only: in a cluster, another node answering proves nothing of this one.
    cluster = Cluster(
        [host],
        port=int(port or 9042),
        connect_timeout=5,
        control_connection_timeout=5,
        execution_profiles={
            EXEC_PROFILE_DEFAULT: ExecutionProfile(
                load_balancing_policy=WhiteListRoundRobinPolicy([host])
            )
        },
    )
    try:
        session = cluster.connect()
        row = session.execute("SELECT release_version FROM system.local", timeout=5).one()
        return row is not None
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False
    finally:
        cluster.shutdown()


SERVICE = Service(
    "cassandra",
    "EVENTSTORE_CASSANDRA_HOSTS",
    "127.0.0.1:9042",
    (9042, 7000),
    answers,
    prepare,
    system_log="system.log",
)
