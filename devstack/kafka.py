"""Kafka: one KRaft broker+controller, run from its jars, with four listeners.

- PLAINTEXT 127.0.0.1:9092: what tests and the server use by default.
- CONTROLLER 127.0.0.1:9093: KRaft's own quorum; never advertised.
- SASL_SSL 127.0.0.1:9094 (`TLS_BOOTSTRAP`): SCRAM-SHA-512 over TLS, as production runs it.
- FAULTY 127.0.0.1:19092 (`FAULTY_LISTEN`), advertised as 127.0.0.1:19094
  (`FAULTY_BOOTSTRAP`): plaintext for fault-injection tests. Nothing of the broker listens on
  19094; a test starts a `devstack.proxy.FaultProxy` there that forwards to 19092. A proxy in
  front of 9092 would not do, because a client bootstraps once and then connects to the
  addresses the broker advertises; through FAULTY every connection a client makes goes
  through the proxy, so cutting the proxy cuts Kafka for that client alone while everyone
  else keeps 9092. Without the proxy running, FAULTY is unusable by design.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from devstack.downloads import resolve_classpath
from devstack.errors import ServiceFailed
from devstack.processes import port_open
from devstack.service import Service
from devstack.templates import render
from devstack.tls import KEYSTORE_PASSWORD, Pki, pki

VERSION = "4.1.1"

TLS_BOOTSTRAP = "127.0.0.1:9094"
FAULTY_LISTEN = "127.0.0.1:19092"
FAULTY_BOOTSTRAP = "127.0.0.1:19094"


def prepare(home: Path, java: Path) -> list[str]:
    return command(home, java, server_properties(home, pki()))


def command(
    home: Path, java: Path, properties: str, cluster_id: str | None = None, heap: str = "512m"
) -> list[str]:
    """Write `properties`, format the storage once (with `cluster_id`, which every broker of one
    cluster must share; a fresh one if None) and return the broker's command line."""
    jars = resolve_classpath("kafka", VERSION)
    (home / "logs").mkdir(parents=True, exist_ok=True)
    props = home / "server.properties"
    props.write_text(properties)
    (home / "log4j.properties").write_text(render("kafka-log4j.properties", home=home))
    java_bin = str(java / "bin" / "java")
    classpath = f"{jars}/*"
    if not (home / "data" / "meta.properties").exists():
        _format_storage(java_bin, classpath, props, cluster_id)
    return [
        java_bin,
        "-Xms256m",
        f"-Xmx{heap}",
        f"-Dlog4j.configuration=file:{home / 'log4j.properties'}",
        f"-Dkafka.logs.dir={home / 'logs'}",
        "-cp",
        classpath,
        "kafka.Kafka",
        str(props),
    ]


def server_properties(home: Path, tls: Pki) -> str:
    return render(
        "kafka-server.properties",
        home=home,
        tls_bootstrap=TLS_BOOTSTRAP,
        faulty_listen=FAULTY_LISTEN,
        faulty_advertised=FAULTY_BOOTSTRAP,
        keystore=tls.keystore,
        keystore_password=KEYSTORE_PASSWORD,
    )


def _format_storage(java_bin: str, classpath: str, props: Path, cluster_id: str | None) -> None:
    """KRaft needs its log directory formatted with a cluster id before the first start."""
    tool = [java_bin, "-cp", classpath, "kafka.tools.StorageTool"]
    try:
        if cluster_id is None:
            cluster_id = subprocess.run(
                [*tool, "random-uuid"], capture_output=True, text=True, check=True
            ).stdout.strip()
        subprocess.run(
            [*tool, "format", "-c", str(props), "-t", cluster_id, "--ignore-formatted"],
            capture_output=True,
            text=True,
            check=True,
        )
    except subprocess.CalledProcessError as exc:
        raise ServiceFailed(
            f"kafka: formatting its storage failed ({' '.join(exc.cmd)}):\n"
            f"{exc.stdout[-4000:]}{exc.stderr[-4000:]}"
        ) from exc


def answers(bootstrap: str) -> bool:
    host, _, port = bootstrap.split(",")[0].strip().partition(":")
    if not port_open(host, int(port or 9092)):
        return False
    # The venv's client, imported late: `down` runs on the system Python, which lacks it.
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        metadata = admin.list_topics(timeout=5)
        return bool(metadata.brokers)
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False


SERVICE = Service(
    "kafka",
    "EVENTSTORE_KAFKA_BOOTSTRAP",
    "127.0.0.1:9092",
    (9092, 9093, 9094, int(FAULTY_LISTEN.rpartition(":")[2])),
    answers,
    prepare,
    system_log="server.log",
)
