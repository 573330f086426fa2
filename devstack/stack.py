"""The stack's commands: bring services up, take them down, report their state.

Each service's configuration lives in its own module (`cassandra`, `kafka`, `opensearch`);
this module only orders them. Failures raise `devstack.errors.StackError`; progress is
logged to the `devstack` logger.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devstack import cassandra, kafka, opensearch
from devstack import cluster as _cluster
from devstack.errors import PortTaken, ServiceFailed, UnknownService
from devstack.java import java_home
from devstack.locations import state_dir
from devstack.processes import launch, port_open, rss_mb, terminate_all
from devstack.service import Service
from devstack.tls import Pki, pki

__all__ = [
    "KAFKA_TLS_BOOTSTRAP",
    "SERVICES",
    "Pki",
    "Service",
    "ServiceState",
    "by_name",
    "down",
    "endpoints",
    "pki",
    "status",
    "up",
]

log = logging.getLogger(__name__)

#: Kafka's second listener: SASL (SCRAM-SHA-512) over TLS, to test what production uses.
KAFKA_TLS_BOOTSTRAP = kafka.TLS_BOOTSTRAP

SERVICES = [cassandra.SERVICE, kafka.SERVICE, opensearch.SERVICE]


#: Names that stand for several services.
GROUPS = {"cluster": _cluster.SERVICES}


def by_name(names: Sequence[str]) -> list[Service]:
    """The services named (a group's name for its members); the one-node stack if none."""
    if not names:
        return SERVICES
    known = {s.name: s for s in [*SERVICES, *_cluster.SERVICES]}
    unknown = [n for n in names if n not in known and n not in GROUPS]
    if unknown:
        choices = sorted([*known, *GROUPS])
        raise UnknownService(f"unknown service(s) {unknown}; known: {choices}")
    return [s for n in names for s in (GROUPS[n] if n in GROUPS else [known[n]])]


def start(service: Service, java: Path) -> float | None:
    """Launch the service unless it already runs; return its launch time."""
    home = service.home
    home.mkdir(parents=True, exist_ok=True)
    if service.running_pid() is not None:
        return None
    busy = [p for p in service.ports if port_open(service.host, p)]
    if busy:
        raise PortTaken(
            f"{service.name}: port(s) {busy} are taken by a process this tool did not start. "
            f"Stop it, or set {service.env_var} to use it as an existing cluster."
        )
    command = service.prepare(home, java)
    log.info("starting %s (log: %s)", service.name, service.log_file)
    env = {**os.environ, **service.extra_env(home, java)}
    pid = launch(command, home, env, service.log_file)
    service.pid_file.write_text(str(pid))
    return time.monotonic()


def up(names: Sequence[str] = (), timeout_s: float | None = None) -> None:
    """Start what is not running yet (idempotent) and wait until every service answers, for
    `timeout_s` (default: EVENTSTORE_STACK_START_TIMEOUT, 240 s)."""
    services = by_name(names)
    java: Path | None = None
    launched: dict[str, float] = {}
    for service in services:
        if service.external:
            name, external, variable = service.name, service.external, service.env_var
            log.info("%s: using %s (%s); not starting one", name, external, variable)
            continue
        if java is None:
            java = java_home()
        started = start(service, java)
        if started is None:
            log.info("%s: already running (pid %s)", service.name, service.running_pid())
        else:
            launched[service.name] = started
    if timeout_s is None:
        timeout_s = float(os.environ.get("EVENTSTORE_STACK_START_TIMEOUT", "240"))
    deadline = time.monotonic() + timeout_s
    pending = list(services)
    while pending:
        for service in list(pending):
            if service.answers(service.endpoint):
                pending.remove(service)
                if service.name in launched:
                    took = time.monotonic() - launched[service.name]
                    log.info("%s: ready at %s in %.1f s", service.name, service.endpoint, took)
                else:
                    log.info("%s: ready at %s", service.name, service.endpoint)
                continue
            if service.name in launched and service.running_pid() is None:
                raise start_failure(service, "the process exited during start-up")
        if pending and time.monotonic() > deadline:
            raise start_failure(pending[0], f"not answering after {timeout_s:.0f} s")
        if pending:
            time.sleep(1)
    if _cluster.is_cluster(services):
        while not _cluster.settled():
            if time.monotonic() > deadline:
                raise ServiceFailed(
                    f"the cluster's nodes answer but did not form one ring (one schema version) "
                    f"and one Kafka quorum of {_cluster.NODES} in {timeout_s:.0f} s; see the logs "
                    f"under {state_dir()}/cluster-*"
                )
            time.sleep(1)
        log.info(
            "cluster: %d Cassandra nodes and %d brokers settled", _cluster.NODES, _cluster.NODES
        )


def start_failure(service: Service, why: str) -> ServiceFailed:
    tails = [service.log_file]
    if service.system_log:
        tails.append(service.home / "logs" / service.system_log)
    shown = "".join(f"--- tail of {path} ---\n{tail(path)}\n" for path in tails)
    return ServiceFailed(
        f"{service.name}: {why}\n{shown}"
        "Check: a JDK 17 (EVENTSTORE_JAVA_HOME), free ports "
        f"{list(service.ports)}, free disk under {state_dir()}, and the log above."
    )


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log yet)"


def down(names: Sequence[str] = ()) -> None:
    """Stop the processes `up` started (by recorded pid), never anyone else's; all at once."""
    stopping: dict[int, Service] = {}
    for service in by_name(names):
        pid = service.running_pid()
        if pid is None:
            log.info("%s: not running (nothing of ours to stop)", service.name)
            continue
        log.info("%s: stopping pid %d", service.name, pid)
        stopping[pid] = service
    for pid in terminate_all(list(stopping), grace_s=60):
        log.info("%s: pid %d ignored SIGTERM for 60 s; killed it", stopping[pid].name, pid)
    for service in stopping.values():
        service.pid_file.unlink(missing_ok=True)


@dataclass(frozen=True)
class ServiceState:
    name: str
    answering: bool
    endpoint: str
    external: str | None
    """The endpoint variable that made the service external, if one did."""
    pid: int | None
    rss_mb: float | None
    log_file: Path


def status(names: Sequence[str] = ()) -> list[ServiceState]:
    """Probe each service; the pid and memory only of those this tool runs."""
    states = []
    for service in by_name(names):
        pid = None if service.external else service.running_pid()
        states.append(
            ServiceState(
                name=service.name,
                answering=service.answers(service.endpoint),
                endpoint=service.endpoint,
                external=service.env_var if service.external else None,
                pid=pid,
                rss_mb=rss_mb(pid) if pid else None,
                log_file=service.log_file,
            )
        )
    return states


def endpoints(cluster: bool = False) -> dict[str, str]:
    """The endpoint variables for the one-node stack, or with the cluster's Cassandra and Kafka
    (OpenSearch stays the one node)."""
    found = {s.env_var: s.endpoint for s in SERVICES}
    if cluster:
        found["EVENTSTORE_CASSANDRA_HOSTS"] = _cluster.CASSANDRA_HOSTS
        found["EVENTSTORE_KAFKA_BOOTSTRAP"] = _cluster.KAFKA_BOOTSTRAP
    return found
