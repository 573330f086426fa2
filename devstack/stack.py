"""Local Cassandra, Kafka and OpenSearch as plain JVM processes on loopback.

The three servers come from Maven Central (no Docker): their jars are resolved once into a
cache outside the work tree, their configuration is written into a state directory, and each
runs as a background process whose pid is recorded so that `down` stops exactly what `up`
started. An endpoint variable (EVENTSTORE_CASSANDRA_HOSTS, EVENTSTORE_KAFKA_BOOTSTRAP,
EVENTSTORE_OPENSEARCH_URL) means "use that cluster": the service is then neither started
nor stopped here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devstack.certificates import make_ca, make_cert, openssl

MAVEN_DIR = Path(__file__).resolve().parent / "maven"

CASSANDRA_VERSION = "5.0.9"
KAFKA_VERSION = "4.1.1"
OPENSEARCH_VERSION = "2.19.6"

START_TIMEOUT_S = float(os.environ.get("EVENTSTORE_STACK_START_TIMEOUT", "240"))


def cache_dir() -> Path:
    """Downloads (jars, the OpenSearch distribution, Maven's repository) live here."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "eventstore"
    return Path(os.environ.get("EVENTSTORE_CACHE_DIR", default))


def state_dir() -> Path:
    """Configuration, data, logs and pid files of the running stack live here.

    Outside the work tree, so every checkout on this machine shares one stack on the
    standard ports instead of fighting over them.
    """
    default = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    return Path(os.environ.get("EVENTSTORE_STACK_DIR", default / "eventstore" / "stack"))


def say(message: str) -> None:
    print(f"[stack] {message}", flush=True)


# --- TLS material -------------------------------------------------------------------------

#: Kafka's second listener: SASL (SCRAM-SHA-512) over TLS, to test what production uses.
KAFKA_TLS_BOOTSTRAP = "127.0.0.1:9094"
#: Protects only the local stack's throw-away keystore (the JVMs require one).
KEYSTORE_PASSWORD = "eventstore-dev"  # noqa: S105 - a local, throw-away keystore


@dataclass(frozen=True)
class Pki:
    """A local CA and one server certificate (127.0.0.1, localhost) for the stack's TLS."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.crt"

    @property
    def keystore(self) -> Path:
        """PKCS#12: the server key and certificate, for Cassandra and Kafka."""
        return self.root / "server.p12"


def pki() -> Pki:
    """Made once with openssl, kept in the state directory (valid ten years; local only)."""
    found = Pki(state_dir() / "pki")
    if found.keystore.exists():
        return found
    root = found.root
    root.mkdir(parents=True, exist_ok=True)
    make_ca("ca", root, days=3650)
    make_cert("server", "ca", root, san="IP:127.0.0.1,DNS:localhost", days=3650)
    openssl(
        root,
        *("pkcs12", "-export", "-in", "server.crt", "-inkey", "server.key", "-certfile"),
        *("ca.crt", "-name", "server", "-out", "server.p12.tmp"),
        *("-password", f"pass:{KEYSTORE_PASSWORD}"),
    )
    (root / "server.p12.tmp").rename(found.keystore)
    return found


# --- Java -------------------------------------------------------------------------------


def java_major(java: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=30, check=False
        ).stderr
    except OSError:
        return None
    for token in out.split():
        token = token.strip('"')
        if (token[:1].isdigit() and "." in token) or token.isdigit():
            head = token.split(".")[0]
            if head.isdigit():
                major = int(head)
                return 8 if major == 1 else major
    return None


def java_home() -> Path:
    """A JDK 17 (17 to 21 work too): Cassandra 5.0 and OpenSearch 2.x refuse newer ones."""
    candidates: list[Path] = []
    for var in ("EVENTSTORE_JAVA_HOME", "JAVA_HOME"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]))
    candidates += sorted(Path("/usr/lib/jvm").glob("java-17-openjdk*"))
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path).resolve().parent.parent)
    for home in candidates:
        major = java_major(home / "bin" / "java")
        if major is not None and 17 <= major <= 21:
            return home
    raise SystemExit(
        "no JDK 17 found: install OpenJDK 17 or point EVENTSTORE_JAVA_HOME at one "
        "(Cassandra 5.0 and OpenSearch 2.19 do not run on JDK 22+)"
    )


# --- downloads --------------------------------------------------------------------------


def maven(args: Sequence[str]) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise SystemExit("Maven ('mvn') is required to fetch the servers from Maven Central")
    cmd = [mvn, "-q", "-B", f"-Dmaven.repo.local={cache_dir() / 'm2'}", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
        raise SystemExit(f"maven failed: {' '.join(cmd)}")


def resolve_classpath(name: str, version: str) -> Path:
    """The runtime jars of `name` at `version`, resolved once into the cache."""
    target = cache_dir() / "jars" / f"{name}-{version}"
    marker = target / ".complete"
    if marker.exists():
        return target
    say(f"downloading {name} {version} and its dependencies from Maven Central ...")
    started = time.monotonic()
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    maven(
        [
            "dependency:copy-dependencies",
            "-f",
            str(MAVEN_DIR / f"{name}.pom.xml"),
            f"-Dserver.version={version}",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={partial}",
        ]
    )
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    marker.touch()
    say(f"  {name}: {dir_size_mb(target):.0f} MB in {time.monotonic() - started:.1f} s")
    return target


def resolve_opensearch_distribution() -> Path:
    target = cache_dir() / "dist" / f"opensearch-{OPENSEARCH_VERSION}"
    marker = target / ".complete"
    if marker.exists():
        return target
    say(f"downloading the OpenSearch {OPENSEARCH_VERSION} distribution from Maven Central ...")
    started = time.monotonic()
    zips = cache_dir() / "dist" / "zips"
    maven(
        [
            "dependency:copy",
            "-Dartifact=org.opensearch.distribution.integ-test-zip:opensearch:"
            f"{OPENSEARCH_VERSION}:zip",
            f"-DoutputDirectory={zips}",
        ]
    )
    archive = zips / f"opensearch-{OPENSEARCH_VERSION}.zip"
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(partial)
    # The archive holds one top-level folder; zipfile drops the executable bits.
    (inner,) = list(partial.iterdir())
    for script in (inner / "bin").iterdir():
        script.chmod(0o755)
    shutil.rmtree(target, ignore_errors=True)
    inner.rename(target)
    shutil.rmtree(partial, ignore_errors=True)
    marker.touch()
    say(
        f"  opensearch: {archive.stat().st_size / 1e6:.0f} MB in {time.monotonic() - started:.1f} s"
    )
    return target


def dir_size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


# --- readiness probes -------------------------------------------------------------------


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def cassandra_answers(hosts: str) -> bool:
    host, _, port = hosts.split(",")[0].strip().partition(":")
    if not port_open(host, int(port or 9042)):
        return False
    from cassandra.cluster import Cluster  # the venv's driver; imported late on purpose

    cluster = Cluster(
        [host], port=int(port or 9042), connect_timeout=5, control_connection_timeout=5
    )
    try:
        session = cluster.connect()
        row = session.execute("SELECT release_version FROM system.local", timeout=5).one()
        return row is not None
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False
    finally:
        cluster.shutdown()


def kafka_answers(bootstrap: str) -> bool:
    host, _, port = bootstrap.split(",")[0].strip().partition(":")
    if not port_open(host, int(port or 9092)):
        return False
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        metadata = admin.list_topics(timeout=5)
        return bool(metadata.brokers)
    except Exception:  # noqa: BLE001
        return False


def opensearch_answers(url: str) -> bool:
    health = url.rstrip("/") + "/_cluster/health?wait_for_status=yellow&timeout=2s"
    try:
        with urllib.request.urlopen(health, timeout=5) as response:  # noqa: S310 - http(s) only
            status = json.load(response).get("status")
            return status in ("yellow", "green")
    except (OSError, urllib.error.URLError, ValueError):
        return False


# --- services ---------------------------------------------------------------------------


@dataclass
class Service:
    name: str
    env_var: str
    default_endpoint: str
    ports: tuple[int, ...]
    answers: Callable[[str], bool]
    prepare: Callable[[Path, Path], list[str]]
    """(state dir, java home) -> command line; writes configuration, resolves jars."""
    extra_env: Callable[[Path, Path], dict[str, str]] = field(default=lambda _s, _j: {})

    @property
    def external(self) -> str | None:
        return os.environ.get(self.env_var) or None

    @property
    def endpoint(self) -> str:
        return self.external or self.default_endpoint

    @property
    def home(self) -> Path:
        return state_dir() / self.name

    @property
    def pid_file(self) -> Path:
        return self.home / "pid"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "stdout.log"

    def running_pid(self) -> int | None:
        """The recorded pid if that process is alive and is still ours; cleans stale files."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if pid_alive(pid) and is_ours(pid, self.home):
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None


def is_ours(pid: int, home: Path) -> bool:
    """Our processes name our state directory on their command line; a recycled pid does not.

    While a launcher script execs the JVM the command line reads empty for a moment, so an
    empty one is asked again rather than taken for a stranger.
    """
    for _ in range(50):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        if cmdline:
            return str(home).encode() in cmdline
        time.sleep(0.02)
    return False


def cassandra_prepare(home: Path, java: Path) -> list[str]:
    jars = resolve_classpath("cassandra", CASSANDRA_VERSION)
    tls = pki()
    for sub in ("data", "commitlog", "saved_caches", "hints", "cdc_raw", "logs", "tmp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    (home / "cassandra.yaml").write_text(
        f"""\
cluster_name: eventstore-dev
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
commitlog_sync: periodic
commitlog_sync_period: 10000ms
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:7000"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: 7000
native_transport_port: 9042
start_native_transport: true
data_file_directories: [{home / "data"}]
commitlog_directory: {home / "commitlog"}
saved_caches_directory: {home / "saved_caches"}
hints_directory: {home / "hints"}
cdc_raw_directory: {home / "cdc_raw"}
auto_snapshot: false
# TLS is optional on the native port: plaintext clients (the default) and TLS clients (tests of
# EVENTSTORE_CASSANDRA_TLS_*) share 9042.
client_encryption_options:
  enabled: true
  optional: true
  keystore: {tls.keystore}
  keystore_password: {KEYSTORE_PASSWORD}
  store_type: PKCS12
  require_client_auth: false
# Paxos v2 halves the round trips of a lightweight transaction (the append path).
paxos_variant: v2
storage_compatibility_mode: NONE
"""
    )
    (home / "logback.xml").write_text(
        f"""\
<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>{home / "logs" / "system.log"}</file>
    <encoder><pattern>%-5level [%thread] %date{{ISO8601}} %logger{{0}} %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
"""
    )
    opens = [
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
    exports = [
        "java.base/jdk.internal.misc",
        "java.base/java.lang.ref",
        "java.management.rmi/com.sun.jmx.remote.internal.rmi",
        "java.management/com.sun.jmx.remote.security",
        "java.rmi/sun.rmi.registry",
        "java.rmi/sun.rmi.server",
        "java.sql/java.sql",
        "jdk.unsupported/sun.misc",
    ]
    return [
        str(java / "bin" / "java"),
        "-Xms512m",
        "-Xmx2g",
        "-Xss256k",
        "-XX:+UseG1GC",
        "-Djdk.attach.allowAttachSelf=true",
        "-Dio.netty.tryReflectionSetAccessible=true",
        *[arg for m in exports for arg in ("--add-exports", f"{m}=ALL-UNNAMED")],
        *[arg for m in opens for arg in ("--add-opens", f"{m}=ALL-UNNAMED")],
        f"-Dcassandra.config=file://{home / 'cassandra.yaml'}",
        "-Dcassandra-foreground=yes",
        f"-Dcassandra.storagedir={home}",
        f"-Dcassandra.logdir={home / 'logs'}",
        f"-Dlogback.configurationFile={home / 'logback.xml'}",
        f"-Djava.io.tmpdir={home / 'tmp'}",
        "-Dcassandra.skip_wait_for_gossip_to_settle=0",
        "-Dcassandra.load_ring_state=false",
        "-Dcassandra.unsafesystem=true",
        "-cp",
        f"{jars}/*",
        "org.apache.cassandra.service.CassandraDaemon",
    ]


def kafka_prepare(home: Path, java: Path) -> list[str]:
    jars = resolve_classpath("kafka", KAFKA_VERSION)
    tls = pki()
    (home / "logs").mkdir(parents=True, exist_ok=True)
    data = home / "data"
    props = home / "server.properties"
    props.write_text(
        f"""\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:9093
listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093,SASL_SSL://{KAFKA_TLS_BOOTSTRAP}
advertised.listeners=PLAINTEXT://127.0.0.1:9092,SASL_SSL://{KAFKA_TLS_BOOTSTRAP}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
# The SASL_SSL listener is what production uses; tests create SCRAM users through the admin
# API on the plaintext one.
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\
  org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location={tls.keystore}
listener.name.sasl_ssl.ssl.keystore.password={KEYSTORE_PASSWORD}
listener.name.sasl_ssl.ssl.key.password={KEYSTORE_PASSWORD}
log.dirs={data}
num.partitions=3
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Topics are created by our migrations with explicit settings, never by a stray client.
auto.create.topics.enable=false
"""
    )
    (home / "log4j.properties").write_text(
        f"""\
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={home / "logs" / "server.log"}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
"""
    )
    java_bin = str(java / "bin" / "java")
    classpath = f"{jars}/*"
    if not (data / "meta.properties").exists():
        cluster_id = subprocess.run(
            [java_bin, "-cp", classpath, "kafka.tools.StorageTool", "random-uuid"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        subprocess.run(
            [
                java_bin,
                "-cp",
                classpath,
                "kafka.tools.StorageTool",
                "format",
                "-c",
                str(props),
                "-t",
                cluster_id,
                "--ignore-formatted",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    return [
        java_bin,
        "-Xms256m",
        "-Xmx512m",
        f"-Dlog4j.configuration=file:{home / 'log4j.properties'}",
        f"-Dkafka.logs.dir={home / 'logs'}",
        "-cp",
        classpath,
        "kafka.Kafka",
        str(props),
    ]


def opensearch_prepare(home: Path, java: Path) -> list[str]:
    dist = resolve_opensearch_distribution()
    for sub in ("data", "logs", "tmp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    conf = home / "config"
    if not conf.exists():
        shutil.copytree(dist / "config", conf)
    return [
        str(dist / "bin" / "opensearch"),
        "-Ediscovery.type=single-node",
        "-Enetwork.host=127.0.0.1",
        "-Ehttp.port=9200",
        "-Etransport.port=9300",
        f"-Epath.data={home / 'data'}",
        f"-Epath.logs={home / 'logs'}",
        "-Ecluster.routing.allocation.disk.threshold_enabled=false",
        "-Ecluster.name=eventstore-dev",
    ]


def opensearch_env(home: Path, java: Path) -> dict[str, str]:
    java_opts = "-Xms512m -Xmx512m"
    if os.geteuid() == 0:
        # OpenSearch refuses to start as root, and CI machines run everything as root. Its
        # root check is made through JNA and is skipped (with a warning) when JNA's native
        # library cannot load, so we stop JNA from unpacking it. This only loses mlockall and
        # the seccomp filter, which a loopback development node does not enforce anyway.
        java_opts += " -Djna.nounpack=true -Djna.nosys=true"
    return {
        "OPENSEARCH_JAVA_HOME": str(java),
        "JAVA_HOME": str(java),
        "OPENSEARCH_PATH_CONF": str(home / "config"),
        "OPENSEARCH_TMPDIR": str(home / "tmp"),
        "OPENSEARCH_JAVA_OPTS": java_opts,
    }


SERVICES = [
    Service(
        "cassandra",
        "EVENTSTORE_CASSANDRA_HOSTS",
        "127.0.0.1:9042",
        (9042, 7000),
        cassandra_answers,
        cassandra_prepare,
    ),
    Service(
        "kafka",
        "EVENTSTORE_KAFKA_BOOTSTRAP",
        "127.0.0.1:9092",
        (9092, 9093, 9094),
        kafka_answers,
        kafka_prepare,
    ),
    Service(
        "opensearch",
        "EVENTSTORE_OPENSEARCH_URL",
        "http://127.0.0.1:9200",
        (9200, 9300),
        opensearch_answers,
        opensearch_prepare,
        opensearch_env,
    ),
]


def by_name(names: Sequence[str]) -> list[Service]:
    if not names:
        return SERVICES
    known = {s.name: s for s in SERVICES}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown service(s) {unknown}; known: {sorted(known)}")
    return [known[n] for n in names]


# --- commands ---------------------------------------------------------------------------


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log yet)"


# Starts the command in the background of a throw-away shell, in a new session, so that the
# service is nobody's child: it outlives whoever ran `up` (a test run, a terminal's Ctrl-C)
# and is reaped by init, never left a zombie of ours.
_DETACH = 'exec "$@" >>"$DEVSTACK_LOG" 2>&1 </dev/null & echo $!'


def start(service: Service, java: Path) -> tuple[int, float] | None:
    """Launch the service unless it already runs; return (pid, launch time)."""
    home = service.home
    home.mkdir(parents=True, exist_ok=True)
    if service.running_pid() is not None:
        return None
    busy = [p for p in service.ports if port_open("127.0.0.1", p)]
    if busy:
        raise SystemExit(
            f"{service.name}: port(s) {busy} are taken by a process this tool did not start. "
            f"Stop it, or set {service.env_var} to use it as an existing cluster."
        )
    command = service.prepare(home, java)
    service.log_file.parent.mkdir(parents=True, exist_ok=True)
    say(f"starting {service.name} (log: {service.log_file})")
    launcher = subprocess.run(
        ["/bin/sh", "-c", _DETACH, "sh", *command],
        cwd=home,
        env={**os.environ, **service.extra_env(home, java), "DEVSTACK_LOG": str(service.log_file)},
        capture_output=True,
        text=True,
        check=True,
        start_new_session=True,
    )
    pid = int(launcher.stdout.strip())
    service.pid_file.write_text(str(pid))
    return pid, time.monotonic()


def up(names: Sequence[str] = ()) -> None:
    services = by_name(names)
    java: Path | None = None
    launched: dict[str, tuple[int, float]] = {}
    for service in services:
        if service.external:
            say(f"{service.name}: using {service.external} ({service.env_var}); not starting one")
            continue
        if java is None:
            java = java_home()
        started = start(service, java)
        if started is None:
            say(f"{service.name}: already running (pid {service.running_pid()})")
        else:
            launched[service.name] = started
    deadline = time.monotonic() + START_TIMEOUT_S
    pending = list(services)
    while pending:
        for service in list(pending):
            if service.answers(service.endpoint):
                pending.remove(service)
                if service.name in launched:
                    took = time.monotonic() - launched[service.name][1]
                    say(f"{service.name}: ready at {service.endpoint} in {took:.1f} s")
                else:
                    say(f"{service.name}: ready at {service.endpoint}")
                continue
            if service.name in launched and service.running_pid() is None:
                fail(service, "the process exited during start-up")
        if pending and time.monotonic() > deadline:
            fail(pending[0], f"not answering after {START_TIMEOUT_S:.0f} s")
        if pending:
            time.sleep(1)


def fail(service: Service, why: str) -> None:
    log = service.log_file
    system_log = {"cassandra": "system.log", "kafka": "server.log"}.get(service.name)
    sys.stderr.write(f"\n[stack] {service.name}: {why}\n--- tail of {log} ---\n{tail(log)}\n")
    if system_log:
        other = service.home / "logs" / system_log
        sys.stderr.write(f"--- tail of {other} ---\n{tail(other)}\n")
    sys.stderr.write(
        "Check: a JDK 17 (EVENTSTORE_JAVA_HOME), free ports "
        f"{list(service.ports)}, free disk under {state_dir()}, and the log above.\n"
    )
    raise SystemExit(1)


def down(names: Sequence[str] = ()) -> None:
    for service in by_name(names):
        pid = service.running_pid()
        if pid is None:
            say(f"{service.name}: not running (nothing of ours to stop)")
            continue
        say(f"{service.name}: stopping pid {pid}")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.5)
        if pid_alive(pid):
            say(f"{service.name}: pid {pid} ignored SIGTERM for 60 s; killing it")
            os.kill(pid, signal.SIGKILL)
        service.pid_file.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (our child, not yet reaped) counts as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def status(names: Sequence[str] = ()) -> int:
    """Print one line per service; exit status 0 only when every service answers."""
    all_up = True
    for service in by_name(names):
        answering = service.answers(service.endpoint)
        all_up &= answering
        state = "up" if answering else "down"
        if service.external:
            print(
                f"{service.name:<11} {state:<5} {service.endpoint:<24} external ({service.env_var})"
            )
            continue
        pid = service.running_pid()
        rss = rss_mb(pid) if pid else None
        print(
            f"{service.name:<11} {state:<5} {service.endpoint:<24} "
            f"pid {pid or '-':<8} rss {f'{rss:.0f} MB' if rss else '-':<8} log {service.log_file}"
        )
    return 0 if all_up else 1


def endpoints() -> dict[str, str]:
    return {s.env_var: s.endpoint for s in SERVICES}


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] not in ("up", "down", "status", "env"):
        print("usage: python -m devstack {up|down|status|env} [service ...]", file=sys.stderr)
        return 2
    command, names = argv[0], argv[1:]
    if command == "up":
        started = time.monotonic()
        up(names)
        say(f"stack ready in {time.monotonic() - started:.1f} s (state: {state_dir()})")
        return 0
    if command == "down":
        down(names)
        return 0
    if command == "env":
        for key, value in endpoints().items():
            print(f"{key}={value}")
        return 0
    return status(names)
