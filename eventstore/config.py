"""Typed, validated settings, read from the environment (prefix EVENTSTORE_) at start-up only.

One class per adapter; each field is documented and named after its variable, e.g.
``CassandraSettings.hosts`` is ``EVENTSTORE_CASSANDRA_HOSTS``.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import grpc
from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from eventstore.domain.access import Quotas
from eventstore.domain.personal import MasterKey, MasterKeys
from eventstore.domain.schemas import SchemaLimits
from eventstore.domain.validation import Limits
from eventstore.sizes import (
    CLIENT_MAX_RECEIVE_BYTES,
    GRPC_MAX_MESSAGE_BYTES,
    max_append_request_bytes,
    max_server_message_bytes,
)
from eventstore.wire.records import max_batch_bytes, required_message_bytes

#: Room in a fetch response beyond its records: per partition about 40 bytes of framing, per
#: topic its name.
FETCH_RESPONSE_FRAMING = 1024 * 1024


def _read_secret(path: Path | None) -> SecretStr | None:
    """A secret from a file (Kubernetes Secrets are mounted as files)."""
    if path is None:
        return None
    try:
        return SecretStr(path.read_text().strip())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from exc


def _check_readable(path: Path | None) -> Path | None:
    if path is not None and not path.is_file():
        raise ValueError(f"cannot read {path}: no such file")
    return path


class _FileBacked(BaseSettings):
    """Settings whose secrets may come from files (Kubernetes mounts Secrets as files).

    `_secret_files` maps a secret field to the field naming its file; the file wins over the
    variable. The file fields are checked like every other path (so an error names the
    variable); here each is read once.
    """

    _secret_files: ClassVar[dict[str, str]] = {}

    @model_validator(mode="after")
    def _secrets_from_files(self) -> Any:
        for secret, file_field in self._secret_files.items():
            path = getattr(self, file_field)
            if path is not None:
                # Frozen model: set it while it is being built.
                object.__setattr__(self, secret, _read_secret(path))
        return self


class CassandraSettings(_FileBacked):
    model_config = SettingsConfigDict(env_prefix="EVENTSTORE_CASSANDRA_", frozen=True)
    _secret_files: ClassVar[dict[str, str]] = {"password": "password_file"}

    hosts: str = Field("127.0.0.1:9042", description="Contact points, host[:port],… (one port)")
    keyspace: str = Field("eventstore", pattern=r"^[a-z][a-z0-9_]{0,47}$")
    local_datacenter: str | None = Field(None, description="Datacenter for token-aware routing")
    replication_factor: int = Field(1, ge=1, description="Keyspace replication factor")
    replication_strategy: Literal["SimpleStrategy", "NetworkTopologyStrategy"] = "SimpleStrategy"
    serial_consistency: Literal["SERIAL", "LOCAL_SERIAL"] = "SERIAL"
    write_consistency: Literal["QUORUM", "LOCAL_QUORUM", "EACH_QUORUM", "ALL", "ONE"] = "QUORUM"
    read_consistency: Literal["QUORUM", "LOCAL_QUORUM", "ALL", "ONE", "LOCAL_ONE"] = "QUORUM"
    request_timeout_s: float = Field(5.0, gt=0, description="Per-request client-side timeout")
    heartbeat_interval_s: float = Field(
        2.0,
        gt=0,
        description="A connection that received nothing for this long is sent a heartbeat",
    )
    heartbeat_timeout_s: float = Field(
        3.0,
        gt=0,
        description="A heartbeat unanswered this long marks the node down, so requests go to "
        "the other replicas: a hung node (a long GC pause, a stuck disk) keeps its sockets "
        "open and would otherwise take a share of appends for as long as it hangs",
    )
    username: str | None = None
    password: SecretStr | None = Field(None, description="Never logged")
    password_file: Path | None = Field(None, description="File holding the password")
    tls_ca_file: Path | None = Field(None, description="CA bundle: turns TLS on")
    tls_cert_file: Path | None = Field(None, description="Client certificate (mutual TLS)")
    tls_key_file: Path | None = Field(None, description="Client key (mutual TLS)")

    @field_validator("password_file", "tls_ca_file", "tls_cert_file", "tls_key_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        return _check_readable(value)

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.tls_ca_file is None:
            return None
        context = ssl.create_default_context(cafile=str(self.tls_ca_file))
        if self.tls_cert_file and self.tls_key_file:
            context.load_cert_chain(str(self.tls_cert_file), str(self.tls_key_file))
        return context

    @field_validator("hosts")
    @classmethod
    def _hosts_not_empty(cls, value: str) -> str:
        if not [h for h in value.split(",") if h.strip()]:
            raise ValueError("needs at least one host")
        return value

    def contact_points(self) -> tuple[list[str], int]:
        hosts: list[str] = []
        port = 9042
        for entry in (h.strip() for h in self.hosts.split(",")):
            if not entry:
                continue
            host, _, port_text = entry.rpartition(":") if ":" in entry else (entry, "", "")
            hosts.append(host)
            if port_text:
                port = int(port_text)
        return hosts, port


class KafkaSettings(_FileBacked):
    model_config = SettingsConfigDict(env_prefix="EVENTSTORE_KAFKA_", frozen=True)
    _secret_files: ClassVar[dict[str, str]] = {"sasl_password": "sasl_password_file"}

    bootstrap: str = Field("127.0.0.1:9092", description="bootstrap.servers")
    topic_prefix: str = Field(
        "events.", pattern=r"^[A-Za-z0-9._-]*$", description="Topic = prefix + aggregate type"
    )
    partitions: int = Field(6, ge=1, description="Partitions of each event topic we create")
    replication_factor: int = Field(1, ge=1, description="Replication of each topic we create")
    min_insync_replicas: int | None = Field(
        None,
        ge=1,
        description="min.insync.replicas of each topic we create: with the producer's acks=all, "
        "the replicas that must hold a record before it is published (2 with a replication "
        "factor of 3 survives one broker's loss without losing or refusing a record); unset: "
        "the brokers' default",
    )
    shutdown_flush_s: float = Field(
        10.0, ge=0, description="At shutdown, wait this long for queued records to be confirmed"
    )
    linger_ms: int = Field(5, ge=0, description="Producer batching delay")
    max_message_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1000,
        le=1_000_000_000,
        description="The largest record batch the Kafka cluster takes: at most the brokers' "
        "socket.request.max.bytes (100 MiB by default), lower where a managed cluster caps "
        "max.message.bytes. The server refuses to start if its limits allow a larger record; "
        "consumers take records up to this size; the dead-letter and republish topics are "
        "created with it (event topics with what the limits need, see README)",
    )
    dead_letter_topic: str = Field(
        "eventstore.dead-letter",
        description="Where the indexer puts records it cannot index, with the reason",
    )
    group_topic_prefix: str = Field(
        "eventstore.groups.",
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Consumer groups' own topics (parked and replayed events): prefix + group "
        "id + .parked/.retry; must not start with topic_prefix (they are not event topics)",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = Field(None, description="Never logged")
    sasl_password_file: Path | None = Field(None, description="File holding the SASL password")
    ssl_ca_file: Path | None = Field(None, description="CA bundle for SSL/SASL_SSL")
    ssl_cert_file: Path | None = Field(None, description="Client certificate (mutual TLS)")
    ssl_key_file: Path | None = Field(None, description="Client key (mutual TLS)")

    @field_validator("sasl_password_file", "ssl_ca_file", "ssl_cert_file", "ssl_key_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        return _check_readable(value)

    @model_validator(mode="after")
    def _group_topics_apart(self) -> KafkaSettings:
        if self.topic_prefix and self.group_topic_prefix.startswith(self.topic_prefix):
            # The indexer and subscriptions would read parked events as an aggregate type.
            raise ValueError(
                f"group_topic_prefix ({self.group_topic_prefix!r}) starts with topic_prefix "
                f"({self.topic_prefix!r}): groups' topics would be read as event topics"
            )
        return self

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> KafkaSettings:
        if self.min_insync_replicas is not None and (
            self.min_insync_replicas > self.replication_factor
        ):
            # Every acks=all write to such a topic would be refused (NOT_ENOUGH_REPLICAS).
            raise ValueError(
                f"min_insync_replicas ({self.min_insync_replicas}) exceeds replication_factor "
                f"({self.replication_factor}): every publication would be refused"
            )
        return self

    def topic(self, aggregate_type: str) -> str:
        return f"{self.topic_prefix}{aggregate_type}"

    def consumer_size_config(self, fetch_max_bytes: int) -> dict[str, str | int | float | bool]:
        """Fetch sizes of a consumer of our topics that may meet a record of max_message_bytes.

        `fetch_max_bytes` is what it asks for per fetch (its read-ahead memory): the broker still
        returns a larger first batch whole (KIP-74), and nothing after it. librdkafka drops a
        response above receive.message.max.bytes, and wants that >= fetch.max.bytes + 512 (and
        fetch.max.bytes >= its message.max.bytes, 1,000,000 by default).
        """
        return {
            "fetch.max.bytes": fetch_max_bytes,
            "receive.message.max.bytes": max(fetch_max_bytes, self.max_message_bytes)
            + FETCH_RESPONSE_FRAMING,
        }

    def client_config(self) -> dict[str, str | int | float | bool]:
        """Connection settings shared by every Kafka client we create."""
        config: dict[str, str | int | float | bool] = {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": self.security_protocol,
            "log_level": 3,
        }
        if self.security_protocol.startswith("SASL"):
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.sasl_username or ""
            config["sasl.password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else ""
            )
        for key, path in (
            ("ssl.ca.location", self.ssl_ca_file),
            ("ssl.certificate.location", self.ssl_cert_file),
            ("ssl.key.location", self.ssl_key_file),
        ):
            if path is not None:
                config[key] = str(path)
        return config


class RelaySettings(BaseSettings):
    """The relay publishes what was committed but not published (crash, Kafka outage)."""

    model_config = SettingsConfigDict(env_prefix="EVENTSTORE_RELAY_", frozen=True)

    interval_s: float = Field(1.0, gt=0, description="How often to look for unpublished events")
    takeover_after_s: float = Field(
        10.0,
        gt=0,
        description="A replica whose heartbeat is this old is presumed dead: another publishes "
        "what its journal names",
    )
    max_in_flight: int = Field(
        10_000, ge=1, description="Publications in flight per process; beyond, the relay takes over"
    )


def _master_key(path: Path | None, variable: str) -> MasterKey | None:
    if path is None:
        return None
    try:
        return MasterKey.from_text(path.read_text())
    except OSError as exc:
        raise ValueError(f"{variable}: cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ValueError(f"{variable}: {exc}") from exc


class PersonalDataSettings(BaseSettings):
    """Personal data (events naming a `data_subject`): sealed with per-subject keys, which a
    master key wraps. Without a master key, such events are refused."""

    model_config = SettingsConfigDict(env_prefix="EVENTSTORE_", frozen=True)

    master_key_file: Path | None = Field(
        None,
        description="File holding the master key: 32 random bytes in base64 (`openssl rand "
        "-base64 32`); a Kubernetes Secret mounted as a file. Unset: events naming a data "
        "subject are refused (FAILED_PRECONDITION), and EraseSubject is not served",
    )
    previous_master_key_file: Path | None = Field(
        None,
        description="The master key before a rotation: still unwraps subject keys until "
        "`eventstore-keys rotate` has re-wrapped them all under the current one",
    )
    subject_key_cache_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="How long a process keeps a subject key: after EraseSubject on one "
        "process, the others may still open the subject's events for at most this long",
    )

    @model_validator(mode="after")
    def _keys_readable(self) -> Any:
        self.master_keys()  # a bad file fails at start-up, naming its variable
        if self.previous_master_key_file is not None and self.master_key_file is None:
            raise ValueError(
                "EVENTSTORE_PREVIOUS_MASTER_KEY_FILE needs EVENTSTORE_MASTER_KEY_FILE too"
            )
        return self

    def master_keys(self) -> MasterKeys | None:
        current = _master_key(self.master_key_file, "EVENTSTORE_MASTER_KEY_FILE")
        if current is None:
            return None
        previous = _master_key(self.previous_master_key_file, "EVENTSTORE_PREVIOUS_MASTER_KEY_FILE")
        return MasterKeys(current, [previous] if previous else [])


class OpenSearchSettings(_FileBacked):
    model_config = SettingsConfigDict(env_prefix="EVENTSTORE_OPENSEARCH_", frozen=True)
    _secret_files: ClassVar[dict[str, str]] = {"password": "password_file"}

    url: str = Field("http://127.0.0.1:9200", description="OpenSearch endpoint")
    username: str | None = None
    password: SecretStr | None = Field(None, description="Never logged")
    password_file: Path | None = Field(None, description="File holding the password")
    ca_file: Path | None = Field(None, description="CA bundle for an https URL")
    index_prefix: str = Field(
        "eventstore-events",
        pattern=r"^[a-z][a-z0-9_-]*$",
        description="Monthly indices <prefix>-YYYY.MM; queries go through the alias <prefix>",
    )
    replicas: int = Field(0, ge=0, description="Replicas of each event index")
    shards: int = Field(1, ge=1, description="Primary shards of each monthly event index")
    request_timeout_s: float = Field(10.0, gt=0)

    @field_validator("password_file", "ca_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        return _check_readable(value)

    def client_options(self) -> dict[str, Any]:
        """Connection options shared by the sync (indexer) and async (server) clients."""
        options: dict[str, Any] = {"hosts": [self.url], "timeout": self.request_timeout_s}
        if self.username and self.password:
            options["http_auth"] = (self.username, self.password.get_secret_value())
        if self.url.startswith("https"):
            options.update(use_ssl=True, verify_certs=True)
            if self.ca_file:
                options["ca_certs"] = str(self.ca_file)
        return options

    @property
    def alias(self) -> str:
        return self.index_prefix

    @property
    def state_index(self) -> str:
        # Not "<prefix>-…": that pattern belongs to the event indices and their template.
        return f"{self.index_prefix}_indexer_state"


#: The kinds of names of a client certificate that may identify a principal.
CERTIFICATE_IDENTITY_KINDS = ("cn", "dns", "uri", "email", "ip")


class LimitSettings(BaseSettings):
    """Request limits; documented in README (Limits)."""

    model_config = SettingsConfigDict(env_prefix="EVENTSTORE_LIMIT_", frozen=True)

    max_aggregate_id_bytes: int = Field(256, ge=1)
    max_type_name_length: int = Field(128, ge=1)
    max_events_per_append: int = Field(1000, ge=1)
    max_event_bytes: int = Field(1024 * 1024, ge=1)
    max_append_bytes: int = Field(4 * 1024 * 1024, ge=1)
    max_snapshot_bytes: int = Field(4 * 1024 * 1024, ge=1)
    max_filter_types: int = Field(100, ge=1)
    #: Entries of one event's metadata (see Limits.max_metadata_entries for the default).
    max_metadata_entries: int = Field(64, ge=1)
    #: Subscriptions one principal may hold open on one server process (its permissions-file
    #: quota `max_subscriptions` overrides it). One catching up holds a Kafka consumer
    #: (threads, sockets); live ones share one per process and hold a queue of about 1 MiB.
    max_subscriptions_per_principal: int = Field(32, ge=1)
    #: Subscriptions one server process holds open in all, whoever the callers (also without
    #: authentication, where every caller is one principal).
    max_subscriptions: int = Field(512, ge=1)
    #: Longest a QueryEvents with min_consistency_token waits for that write to be searchable,
    #: whatever the caller's deadline (the call holds one of the principal's calls in flight
    #: meanwhile, and searches about four times a second).
    max_visibility_wait_s: float = Field(10.0, gt=0, le=300)
    #: Calls (every RPC but Subscribe, bounded above) one authenticated principal may have in
    #: flight at once on one server process, unless its permissions entry sets
    #: `quotas.max_calls_in_flight`. 256: by Little's law the default 5,000 calls/s at 50 ms
    #: each are 250 at once, so a service within its rate meets it only when the server is
    #: already slow; yet one principal holding slow calls (reads of long aggregates, streams it
    #: does not read) takes at most an eighth of the 2,048 EVENTSTORE_MAX_CONCURRENT_RPCS.
    max_calls_in_flight_per_principal: int = Field(256, ge=1)
    #: Cassandra calls (a read's page, an append's Paxos round, ...) one server process runs at
    #: once for its callers; beyond it they queue, and each freed slot goes to the waiting
    #: principal that holds the fewest (eventstore.usecases.fairness), so one principal's
    #: backlog cannot delay another's calls by more than about one call. 32: in a flood of
    #: 256 reads of 4 MB aggregates on the 2-core dev box, 64 let Cassandra time out 2 of 500
    #: other principal's appends (UNAVAILABLE, DEADLINE_EXCEEDED), 32 and 16 none; one
    #: process does not run more than ~1,000 appends/s, which 32 Paxos rounds of 30 ms allow.
    storage_calls_in_flight: int = Field(32, ge=1)
    #: The same for OpenSearch searches (QueryEvents): OpenSearch's search pool has
    #: 1.5 x cores + 1 threads and queues the rest first come, first served.
    search_calls_in_flight: int = Field(16, ge=1)
    #: Calls per second (any RPC) one authenticated principal may make to one server, unless
    #: its permissions entry sets `quotas.requests_per_s`; 0: no default (unlimited).
    default_requests_per_s: float = Field(5000, ge=0)
    #: Append request bytes per second one authenticated principal may send to one server,
    #: unless its permissions entry sets `quotas.append_bytes_per_s`; 0: no default.
    default_append_bytes_per_s: int = Field(8 * 1024 * 1024, ge=0)
    #: Appended events per second one authenticated principal may send to one server, unless
    #: its permissions entry sets `quotas.append_events_per_s`; 0: no default. The bytes quota
    #: does not bound the CPU of small events (8 MiB/s of ~100 B events is ~80,000 events/s,
    #: several cores of Python); 10,000/s is the product's whole target rate, per process.
    default_append_events_per_s: float = Field(10_000, ge=0)
    #: Bytes of events ReadAggregate sends one authenticated principal per second from one
    #: server, unless its permissions entry sets `quotas.read_bytes_per_s`; 0: no default.
    #: Reads beyond it are slowed, not refused. Reading costs the server far more CPU per
    #: byte than Cassandra (the driver decoding rows, then protobuf: about a core for 30 MB/s
    #: of 1 kB events), and a busy event loop delays every other call: in a flood of 256 reads
    #: of 4 MB aggregates on the 2-core dev box, 32 MiB/s still let another principal's first
    #: appends take 5-8 s; at 8 MiB/s the slowest of 500 took 134-185 ms.
    default_read_bytes_per_s: int = Field(8 * 1024 * 1024, ge=0)

    def to_limits(self) -> Limits:
        return Limits(
            max_aggregate_id_bytes=self.max_aggregate_id_bytes,
            max_type_name_length=self.max_type_name_length,
            max_events_per_append=self.max_events_per_append,
            max_event_bytes=self.max_event_bytes,
            max_append_bytes=self.max_append_bytes,
            max_snapshot_bytes=self.max_snapshot_bytes,
            max_filter_types=self.max_filter_types,
            max_metadata_entries=self.max_metadata_entries,
        )

    def default_quotas(self) -> Quotas:
        """What an authenticated principal gets where its permissions entry sets no quota."""
        return Quotas(
            max_subscriptions=self.max_subscriptions_per_principal,
            max_calls_in_flight=self.max_calls_in_flight_per_principal,
            requests_per_s=self.default_requests_per_s or None,
            append_bytes_per_s=self.default_append_bytes_per_s or None,
            append_events_per_s=self.default_append_events_per_s or None,
            read_bytes_per_s=self.default_read_bytes_per_s or None,
        )

    def deliverable(self, kafka: KafkaSettings) -> list[str]:
        """Why what these limits accept could not be delivered everywhere (invariant 11); empty
        when it can. Each reason names the variables to change."""
        limits = self.to_limits()
        problems = []
        batch, required = max_batch_bytes(limits), required_message_bytes(limits)
        if required > kafka.max_message_bytes:
            problems.append(
                f"EVENTSTORE_LIMIT_MAX_EVENT_BYTES={self.max_event_bytes} (with "
                f"EVENTSTORE_LIMIT_MAX_METADATA_ENTRIES={self.max_metadata_entries}, "
                f"EVENTSTORE_LIMIT_MAX_AGGREGATE_ID_BYTES={self.max_aggregate_id_bytes} and "
                f"EVENTSTORE_LIMIT_MAX_TYPE_NAME_LENGTH={self.max_type_name_length}) allows Kafka "
                f"records of up to {batch} bytes ({required} with a margin), more than "
                f"EVENTSTORE_KAFKA_MAX_MESSAGE_BYTES={kafka.max_message_bytes}: lower the limits, "
                "or raise EVENTSTORE_KAFKA_MAX_MESSAGE_BYTES if the brokers take more "
                "(socket.request.max.bytes)"
            )
        sent = max_server_message_bytes(limits)
        if sent > CLIENT_MAX_RECEIVE_BYTES:
            problems.append(
                f"EVENTSTORE_LIMIT_MAX_EVENT_BYTES={self.max_event_bytes} and "
                f"EVENTSTORE_LIMIT_MAX_SNAPSHOT_BYTES={self.max_snapshot_bytes} allow gRPC "
                f"messages to clients of up to {sent} bytes; clients take at most "
                f"{CLIENT_MAX_RECEIVE_BYTES}"
            )
        received = max_append_request_bytes(limits)
        if received > GRPC_MAX_MESSAGE_BYTES:
            problems.append(
                f"EVENTSTORE_LIMIT_MAX_APPEND_BYTES={self.max_append_bytes} and "
                f"EVENTSTORE_LIMIT_MAX_EVENTS_PER_APPEND={self.max_events_per_append} allow "
                f"append requests of up to {received} bytes; gRPC carries at most "
                f"{GRPC_MAX_MESSAGE_BYTES}"
            )
        return problems


class SchemaSettings(BaseSettings):
    """The event schema registry (README, Evolving an event type)."""

    model_config = SettingsConfigDict(env_prefix="EVENTSTORE_SCHEMA_", frozen=True)

    #: Bytes of one schema document (a JSON Schema or a serialized FileDescriptorSet).
    max_document_bytes: int = Field(64 * 1024, ge=1, le=16 * 1024 * 1024)
    #: Versions one event type may have.
    max_versions: int = Field(100, ge=1, le=100_000)
    #: Operations of one version's upcast.
    max_upcast_operations: int = Field(32, ge=0, le=1000)
    #: Bytes of JSON of one added default value.
    max_upcast_value_bytes: int = Field(4096, ge=1, le=1024 * 1024)
    #: How long a server trusts its cached list of an event type's versions before reading it
    #: again: a version registered through another replica is enforced (and read as
    #: "latest") here within this time; through this replica, at once. Versions themselves
    #: never change, so only the list's end can be stale.
    refresh_s: float = Field(5.0, gt=0, le=3600)

    def to_limits(self) -> SchemaLimits:
        return SchemaLimits(
            max_document_bytes=self.max_document_bytes,
            max_versions=self.max_versions,
            max_upcast_operations=self.max_upcast_operations,
            max_upcast_value_bytes=self.max_upcast_value_bytes,
        )


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EVENTSTORE_", frozen=True)

    listen: str = Field("127.0.0.1:50051", description="gRPC listen address host:port")
    health_listen: str = Field(
        "",
        description="Also serve grpc.health.v1 (only) in plaintext on host:port, for probes "
        "that cannot speak TLS (Kubernetes); empty: off",
    )
    http_listen: str = Field(
        "",
        description="Also serve the REST/JSON face (routes from the proto's google.api.http "
        "options, OpenAPI at /openapi.json) on host:port, e.g. 0.0.0.0:8080; empty: off. It "
        "forwards to the gRPC service in-process, so authentication (the API key, "
        "'Authorization: Bearer <key>'), grants, quotas and limits are the gRPC port's; with "
        "EVENTSTORE_TLS_CERT_FILE it serves HTTPS with the same certificate (and, with "
        "EVENTSTORE_TLS_CLIENT_CA_FILE, requires a client certificate it signed)",
    )
    tls_cert_file: Path | None = Field(None, description="Server certificate: serve TLS")
    tls_key_file: Path | None = Field(None, description="Server private key")
    tls_client_ca_file: Path | None = Field(
        None, description="CA of client certificates: require mutual TLS"
    )
    tls_client_identities: str = Field(
        "cn,dns",
        description="Which names of a client certificate may match a principal's "
        "`certificates`, comma-separated: cn (subject common name), dns, uri, email, ip "
        "(subject alternative names of that kind)",
    )
    permissions_file: Path | None = Field(
        None,
        description="Principals, their API key hashes, certificate identities, grants, quotas",
    )
    permissions_reload_s: float = Field(
        5.0, gt=0, description="How often the permissions file is checked for changes"
    )
    auth_disabled: bool = Field(
        False,
        description="Serve without authentication (every caller may do everything); logged "
        "as a warning at start. Only for local development.",
    )
    processes: int = Field(
        1,
        ge=1,
        description="Server processes sharing the port (SO_REUSEPORT), one per core to use: "
        "above 1, eventstore-server supervises that many workers, each a full server (its own "
        "connections, journal, quotas and subscription bounds)",
    )
    worker: int | None = Field(
        None, ge=0, description="Set by the supervisor only: this worker's index, in its logs"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    max_concurrent_rpcs: int = Field(
        2048,
        ge=0,
        description="RPCs in flight in this server process, open streams included; beyond, "
        "gRPC refuses a call at once with RESOURCE_EXHAUSTED, before reading its request. "
        "0: unbounded. Must exceed EVENTSTORE_LIMIT_MAX_SUBSCRIPTIONS",
    )
    read_page_size: int = Field(500, ge=1, le=10_000, description="Events per ReadAggregate page")
    grace_period_s: float = Field(10.0, ge=0, description="Time in-flight RPCs get at shutdown")
    startup_timeout_s: float = Field(
        60.0, gt=0, description="Give up (exit 1) if Cassandra does not answer within this"
    )
    subscription_heartbeat_s: float = Field(
        15.0, gt=0, description="A subscription with nothing to send sends a heartbeat this often"
    )
    subscription_dedupe_bytes: int = Field(
        8 * 1024 * 1024,
        ge=64 * 1024,
        description="Memory one wide subscription spends remembering recent aggregates' versions "
        "to drop repeated copies (a server holds at most EVENTSTORE_LIMIT_MAX_SUBSCRIPTIONS)",
    )
    group_max_attempts: int = Field(
        5,
        ge=1,
        le=100,
        description="Deliveries of one event to a consumer group before it is parked",
    )
    group_ack_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A group delivery not acknowledged within this counts as rejected",
    )
    group_max_backoff_s: float = Field(
        5.0, gt=0, description="Longest wait before a rejected group delivery is sent again"
    )
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Prometheus metrics on 127.0.0.1:<port>; 0 turns them off"
    )
    metrics_host: str = Field("127.0.0.1", description="Address of the metrics endpoint")
    failpoints: str = Field(
        "",
        description="Test-only crash points, e.g. append.after_commit=crash; empty in production",
    )
    cassandra: CassandraSettings = Field(default_factory=CassandraSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    relay: RelaySettings = Field(default_factory=RelaySettings)
    opensearch: OpenSearchSettings = Field(default_factory=OpenSearchSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    personal: PersonalDataSettings = Field(default_factory=PersonalDataSettings)
    schemas: SchemaSettings = Field(default_factory=SchemaSettings)

    @field_validator("tls_cert_file", "tls_key_file", "tls_client_ca_file", "permissions_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        return _check_readable(value)

    @field_validator("http_listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, colon, port = value.rpartition(":")
        if value and not (colon and host and port.isdigit() and int(port) <= 65535):
            raise ValueError("must be host:port (e.g. 0.0.0.0:8080), or empty to turn it off")
        return value

    @field_validator("tls_client_identities")
    @classmethod
    def _identity_kinds(cls, value: str) -> str:
        kinds = [kind.strip() for kind in value.split(",") if kind.strip()]
        unknown = sorted(set(kinds) - set(CERTIFICATE_IDENTITY_KINDS))
        if not kinds or unknown:
            raise ValueError(
                f"EVENTSTORE_TLS_CLIENT_IDENTITIES: {unknown or 'empty'}; choose among "
                f"{', '.join(CERTIFICATE_IDENTITY_KINDS)}"
            )
        return ",".join(kinds)

    def client_identity_kinds(self) -> tuple[str, ...]:
        return tuple(self.tls_client_identities.split(","))

    @model_validator(mode="after")
    def _tls_complete(self) -> Any:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("TLS needs both EVENTSTORE_TLS_CERT_FILE and EVENTSTORE_TLS_KEY_FILE")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError(
                "mutual TLS (EVENTSTORE_TLS_CLIENT_CA_FILE) needs the server's TLS too"
            )
        if self.permissions_file is None and not self.auth_disabled:
            raise ValueError(
                "EVENTSTORE_PERMISSIONS_FILE is required: every call is authenticated. "
                "To run without authentication (local development only), set "
                "EVENTSTORE_AUTH_DISABLED=true"
            )
        if self.permissions_file is not None and self.auth_disabled:
            raise ValueError(
                "EVENTSTORE_PERMISSIONS_FILE and EVENTSTORE_AUTH_DISABLED=true contradict "
                "each other: set one"
            )
        return self

    @model_validator(mode="after")
    def _room_beside_subscriptions(self) -> Any:
        if 0 < self.max_concurrent_rpcs <= self.limits.max_subscriptions:
            raise ValueError(
                f"EVENTSTORE_MAX_CONCURRENT_RPCS={self.max_concurrent_rpcs} must exceed "
                f"EVENTSTORE_LIMIT_MAX_SUBSCRIPTIONS={self.limits.max_subscriptions}: open "
                "subscriptions could otherwise take every slot and refuse all other calls"
            )
        return self

    @model_validator(mode="after")
    def _room_beside_one_principal(self) -> Any:
        # Half of what subscriptions leave: one principal at its bound still leaves the others
        # as many slots as it holds.
        room = (self.max_concurrent_rpcs - self.limits.max_subscriptions) // 2
        if self.max_concurrent_rpcs > 0 and self.limits.max_calls_in_flight_per_principal > room:
            raise ValueError(
                "EVENTSTORE_LIMIT_MAX_CALLS_IN_FLIGHT_PER_PRINCIPAL="
                f"{self.limits.max_calls_in_flight_per_principal} must be at most half of "
                f"EVENTSTORE_MAX_CONCURRENT_RPCS={self.max_concurrent_rpcs} less "
                f"EVENTSTORE_LIMIT_MAX_SUBSCRIPTIONS={self.limits.max_subscriptions} ({room}): "
                "one principal's slow calls could otherwise take the slots of all the others"
            )
        return self

    @model_validator(mode="after")
    def _limits_deliverable(self) -> Any:
        problems = self.limits.deliverable(self.kafka)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def http_ssl_context(self) -> ssl.SSLContext | None:
        """The REST/JSON face's TLS: the gRPC port's certificate, and its client CA if any."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.tls_cert_file), str(self.tls_key_file))
        if self.tls_client_ca_file is not None:
            context.load_verify_locations(cafile=str(self.tls_client_ca_file))
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def server_credentials(self) -> grpc.ServerCredentials | None:
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        client_ca = self.tls_client_ca_file.read_bytes() if self.tls_client_ca_file else None
        return grpc.ssl_server_credentials(
            [(self.tls_key_file.read_bytes(), self.tls_cert_file.read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )


#: What an OTLP exporter of OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL we ship: HTTP only (the gRPC
#: exporter would pin a second grpcio beside the server's).
OTLP_PROTOCOLS = ("http/protobuf",)


class TracingSettings(BaseSettings):
    """OpenTelemetry tracing of the server, the indexer and the replay CLI (README, Tracing).

    Only whether it is on is ours; where spans go, the service name, the sampler and the
    batching are the standard OTEL_* variables, read by the SDK."""

    model_config = SettingsConfigDict(env_prefix="EVENTSTORE_", frozen=True)

    tracing: Literal["off", "otlp"] = Field(
        "off",
        description="otlp: trace RPCs and backend calls and export the spans by OTLP over HTTP "
        "(OTEL_EXPORTER_OTLP_ENDPOINT, default http://localhost:4318); off: no spans, and "
        "events carry no trace context",
    )
    otlp_protocol: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"
        ),
        description="The standard variable, checked: only http/protobuf is available",
    )

    @model_validator(mode="after")
    def _protocol_shipped(self) -> Any:
        if (
            self.tracing == "otlp"
            and self.otlp_protocol is not None
            and self.otlp_protocol not in OTLP_PROTOCOLS
        ):
            raise ValueError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL={self.otlp_protocol}: the event store exports "
                f"spans by {', '.join(OTLP_PROTOCOLS)} only (port 4318 of a collector)"
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.tracing != "off"


class ConfigError(Exception):
    """A setting is missing or wrong; the message names the environment variable."""


S = TypeVar("S", bound=BaseSettings)


def load(cls: type[S]) -> S:
    """Read settings from the environment, turning validation errors into one clear message."""
    try:
        return cls()
    except ValidationError as exc:
        prefixes = {
            sub.__name__: str(sub.model_config.get("env_prefix", ""))
            for sub in (
                CassandraSettings,
                KafkaSettings,
                OpenSearchSettings,
                RelaySettings,
                LimitSettings,
                SchemaSettings,
                ServerSettings,
                TracingSettings,
                cls,
            )
        }
        prefix = prefixes.get(exc.title, "EVENTSTORE_")
        problems = []
        for error in exc.errors():
            name = "_".join(str(part) for part in error["loc"])
            if not name:  # a rule across several settings: its message names them
                problems.append(str(error["msg"]).removeprefix("Value error, "))
                continue
            shown = "" if "password" in name else f" (got {error['input']!r})"
            problems.append(f"{prefix}{name.upper()}: {error['msg']}{shown}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
