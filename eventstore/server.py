"""Composition root: the only module that knows every concrete class. eventstore-server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field

import grpc
import prometheus_client
import structlog
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection

from eventstore import metrics, tracing, workers
from eventstore.api.admission import Admission
from eventstore.api.auth import Authenticator
from eventstore.api.decoding import add_service
from eventstore.api.gate import CredentialGate
from eventstore.api.precheck import append_precheck
from eventstore.api.quotas import QuotaLimiter
from eventstore.api.servicer import DeferredServicer, EventStoreServicer, refuse_undecodable
from eventstore.config import ConfigError, ServerSettings, TracingSettings, load
from eventstore.domain.access import PolicyError
from eventstore.domain.errors import StorageUnavailable
from eventstore.failpoints import Failpoints
from eventstore.observability import configure_logging
from eventstore.policy_file import PolicyFile
from eventstore.ports import (
    AggregateCatalog,
    EventIndex,
    EventLog,
    EventPublisher,
    EventStorage,
    GroupLog,
    PublicationLog,
    SchemaRegistry,
    SnapshotStore,
    SubjectKeys,
)
from eventstore.publishing.groups import KafkaGroupLog
from eventstore.publishing.kafka import KafkaEventPublisher
from eventstore.publishing.log import KafkaEventLog
from eventstore.publishing.shared_tail import SharedTailLog
from eventstore.rest.gateway import Gateway
from eventstore.search.opensearch import OpenSearchEventIndex
from eventstore.sizes import (
    GRPC_MAX_MESSAGE_BYTES,
    max_append_request_bytes,
    max_server_message_bytes,
    max_snapshot_request_bytes,
)
from eventstore.storage.cassandra import CassandraEventStorage
from eventstore.storage.catalog import CassandraAggregateCatalog
from eventstore.storage.connection import CassandraConnection
from eventstore.storage.outbox import CassandraPublicationLog
from eventstore.storage.schemas import CassandraSchemaRegistry
from eventstore.storage.snapshots import CassandraSnapshotStore
from eventstore.storage.subject_keys import CassandraSubjectKeys
from eventstore.usecases.append import AppendEvents, utc_now_ms
from eventstore.usecases.fairness import FairIndex, FairShare, FairSnapshots, FairStorage
from eventstore.usecases.groups import ConsumeGroup, GroupSettings
from eventstore.usecases.journal import WriterJournal
from eventstore.usecases.personal import EraseSubject, Keyring, PersonalData
from eventstore.usecases.publish import Publication
from eventstore.usecases.query import QueryEvents
from eventstore.usecases.read import DescribeAggregate, ReadAggregate
from eventstore.usecases.schemas import SchemaCatalog, Schemas
from eventstore.usecases.snapshots import GetSnapshot, SaveSnapshot
from eventstore.usecases.subscribe import Subscribe
from eventstore.v1 import eventstore_pb2

log = structlog.get_logger(__name__)

#: How long a stopping replica reports NOT_SERVING, still serving, before it sends GOAWAY.
ANNOUNCE_S = 1.0

SERVICE = eventstore_pb2.DESCRIPTOR.services_by_name["EventStore"]
SERVICE_NAME = SERVICE.full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"]


@dataclass
class Components:
    """The adapters and background services of one process.

    Built from settings by `build` (production and the integration tests alike), which owns
    what it opened and closes it, in reverse order, on `close` or when building fails half-way.
    Components given by a caller (unit tests pass fakes) are the caller's to close.
    """

    storage: EventStorage
    outbox: PublicationLog | None = None
    publisher: EventPublisher | None = None
    catalog: AggregateCatalog | None = None
    log: EventLog | None = None
    groups: GroupLog | None = None
    index: EventIndex | None = None
    snapshots: SnapshotStore | None = None
    subject_keys: SubjectKeys | None = None
    schemas: SchemaRegistry | None = None
    owned: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    @classmethod
    async def build(cls, settings: ServerSettings) -> Components:
        async with contextlib.AsyncExitStack() as owned:
            connection = await CassandraConnection.open(settings.cassandra)
            owned.push_async_callback(connection.close)
            storage = await asyncio.to_thread(CassandraEventStorage, connection)
            outbox = await CassandraPublicationLog.create(connection)
            catalog = await CassandraAggregateCatalog.create(connection)
            snapshots = await CassandraSnapshotStore.create(connection)
            subject_keys = await CassandraSubjectKeys.create_store(connection)
            schemas = await CassandraSchemaRegistry.create(connection)
            # Kafka may be down now: that must not stop appends (the relay catches up later).
            publisher = KafkaEventPublisher(settings.kafka, settings.limits.to_limits())
            owned.push_async_callback(publisher.close)
            index = OpenSearchEventIndex(settings.opensearch, topic_of=settings.kafka.topic)
            owned.push_async_callback(index.close)
            # Live subscriptions share one Kafka consumer; only catching up takes one each.
            log = SharedTailLog(KafkaEventLog(settings.kafka))
            owned.push_async_callback(log.close)
            groups = KafkaGroupLog(settings.kafka)
            owned.push_async_callback(groups.close)
            return cls(
                storage=storage,
                outbox=outbox,
                publisher=publisher,
                catalog=catalog,
                log=log,
                groups=groups,
                index=index,
                snapshots=snapshots,
                subject_keys=subject_keys,
                schemas=schemas,
                owned=owned.pop_all(),
            )

    async def close(self) -> None:
        await self.owned.aclose()


@dataclass
class RunningServer:
    settings: ServerSettings
    server: grpc.aio.Server
    deferred: DeferredServicer
    health: health_aio.HealthServicer
    port: int
    admission: Admission
    authenticator: Authenticator
    #: the permissions file being watched (None: authentication turned off)
    permissions: PolicyFile | None = None
    watcher: asyncio.Task[None] | None = None
    #: the plaintext health-only server (EVENTSTORE_HEALTH_LISTEN)
    health_server: grpc.aio.Server | None = None
    components: Components | None = None
    publication: Publication | None = None
    relay: asyncio.Task[None] | None = None
    #: Cassandra slots of the calls made for callers (None until attached)
    share: FairShare | None = None
    #: the REST/JSON face (EVENTSTORE_HTTP_LISTEN) and its port (0: off)
    gateway: Gateway | None = None
    http_port: int = 0
    #: the private directory of the gateway's Unix socket to the gRPC service
    private_dir: str | None = None

    async def attach(self, components: Components) -> None:
        """Wire the use cases to the connected backends, start the relay, report SERVING."""
        settings = self.settings
        storage = components.storage
        # The relay and takeover use `storage` itself: the server's own work is not queued
        # behind its callers.
        self.share = FairShare(settings.limits.storage_calls_in_flight)
        shared = FairStorage(storage, self.share)
        searches = FairShare(settings.limits.search_calls_in_flight)
        snapshots = (
            FairSnapshots(components.snapshots, self.share)
            if components.snapshots is not None
            else None
        )
        if components.outbox is not None and components.publisher is not None:
            self.publication = Publication(
                storage,
                components.outbox,
                components.publisher,
                WriterJournal(components.outbox, components.catalog),
                interval_s=settings.relay.interval_s,
                takeover_after_s=settings.relay.takeover_after_s,
                max_in_flight=settings.relay.max_in_flight,
                on_published=metrics.PUBLISH_LAG.observe,
                on_round=metrics.RELAY_ROUND.observe,
            )
            # The writer exists for the other replicas before its first announcement.
            await self.publication.start(settings.startup_timeout_s)
            self.relay = asyncio.create_task(self.publication.run(), name="relay")
        schemas = (
            Schemas(
                components.schemas,
                SchemaCatalog(
                    components.schemas,
                    refresh_s=settings.schemas.refresh_s,
                    max_event_bytes=settings.limits.max_event_bytes,
                ),
                settings.schemas.to_limits(),
                clock=utc_now_ms,
            )
            if components.schemas is not None
            else None
        )
        personal: PersonalData | None = None
        erase: EraseSubject | None = None
        masters = settings.personal.master_keys()
        ttl_s = settings.personal.subject_key_cache_s
        if masters is not None and components.subject_keys is not None:
            keyring = Keyring(components.subject_keys, masters, ttl_s)
            personal = PersonalData(keyring, components.subject_keys)
        append = AppendEvents(
            shared,
            publication=self.publication,
            catalog=components.catalog,
            failpoints=Failpoints(settings.failpoints),
            personal=personal,
            schemas=schemas.catalog if schemas is not None else None,
        )
        if personal is not None and components.subject_keys is not None:
            erase = EraseSubject(
                keyring,
                components.subject_keys,
                audit=append,
                snapshots=snapshots,
                index=components.index,
                cache_ttl_s=ttl_s,
            )
        self.deferred.target = EventStoreServicer(
            personal=personal,
            erase=erase,
            admission=self.admission,
            authenticator=self.authenticator,
            quotas=QuotaLimiter(
                defaults=settings.limits.default_quotas(),
                subscriptions=settings.limits.max_subscriptions,
            ),
            append=append,
            schemas=schemas,
            read=ReadAggregate(shared, settings.read_page_size),
            describe=DescribeAggregate(shared),
            limits=settings.limits.to_limits(),
            subscribe=(
                Subscribe(
                    shared,
                    components.log,
                    settings.subscription_heartbeat_s,
                    on_lag=metrics.SubscriptionLag().report,
                    dedupe_bytes=settings.subscription_dedupe_bytes,
                )
                if components.log is not None
                else None
            ),
            groups=(
                ConsumeGroup(
                    components.groups,
                    GroupSettings(
                        max_attempts=settings.group_max_attempts,
                        ack_timeout_s=settings.group_ack_timeout_s,
                        max_backoff_s=settings.group_max_backoff_s,
                        heartbeat_s=settings.subscription_heartbeat_s,
                    ),
                    on_parked=metrics.GROUP_PARKED.inc,
                )
                if components.groups is not None
                else None
            ),
            query=(
                QueryEvents(
                    FairIndex(components.index, searches),
                    max_wait_s=settings.limits.max_visibility_wait_s,
                )
                if components.index is not None
                else None
            ),
            snapshots=(
                (
                    SaveSnapshot(shared, snapshots, personal=personal),
                    GetSnapshot(shared, snapshots, personal=personal),
                )
                if snapshots is not None
                else None
            ),
        )
        self.components = components
        # The backends answered (connecting prepared every statement): we can serve.
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float) -> None:
        # 1. Report NOT_SERVING, and keep serving a moment: health-checking load balancers
        #    stop sending here, and nobody is refused meanwhile.
        # 2. gRPC's stop() sends every connection a GOAWAY and closes the listener: clients'
        #    channels open their next calls on other replicas (transparently, spending none of
        #    their retries). Refusing calls ourselves on connections still open (as this did
        #    before) let round robin keep picking this replica: during a rolling restart an
        #    append got UNAVAILABLE on all six of its client's tries.
        # 3. Meanwhile drain (admission.py): calls in flight finish, streams end between two
        #    messages, and a call that crossed the GOAWAY is refused cleanly (UNAVAILABLE).
        # Then let queued publications be confirmed, and close the backends.
        await self.health.enter_graceful_shutdown()
        started = time.monotonic()
        await asyncio.sleep(min(ANNOUNCE_S, grace / 4))
        remaining = max(grace - (time.monotonic() - started), 0.5)
        stopping = asyncio.create_task(self.server.stop(remaining))
        # The REST face stops listening now too; its calls in flight are gRPC calls, draining.
        gateway = (
            asyncio.create_task(self.gateway.stop(remaining)) if self.gateway is not None else None
        )
        await self.admission.drain(remaining)
        await stopping
        if gateway is not None:
            await gateway
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)
        if self.health_server is not None:
            await self.health_server.stop(0)
        if self.publication is not None:
            await self.publication.stop(grace)
        for task in (self.relay, self.watcher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.components is not None:
            await self.components.close()


def _authentication(settings: ServerSettings) -> tuple[Authenticator, PolicyFile | None]:
    """The permissions file, read now: a wrong one stops the start (PolicyError)."""
    if settings.permissions_file is None:
        log.warning(
            "AUTHENTICATION IS OFF (EVENTSTORE_AUTH_DISABLED=true): any caller may read and "
            "write every aggregate type, and events record no principal"
        )
        return Authenticator(None), None
    permissions = PolicyFile.load(settings.permissions_file)
    policy = permissions.current()
    log.info(
        "permissions loaded",
        path=str(settings.permissions_file),
        principals=len(policy.principals),
        keys=len(policy.keys),
        certificates=len(policy.certificates),
    )
    return Authenticator(permissions.current, settings.client_identity_kinds()), permissions


async def listen(settings: ServerSettings) -> RunningServer:
    """Open the port at once: health NOT_SERVING and every RPC refused (UNAVAILABLE) until
    `attach` wires the backends, so probes see "starting" rather than "connection refused"."""
    authenticator, permissions = _authentication(settings)
    limits = settings.limits.to_limits()
    # Room for the largest valid append or snapshot (their encoding, not just the bytes the
    # limits count: see eventstore/sizes.py), and beyond that for an oversized request to reach
    # our validation (INVALID_ARGUMENT naming the field) instead of a transport error.
    receive = min(
        GRPC_MAX_MESSAGE_BYTES,
        max(
            2 * limits.max_append_bytes + 1024 * 1024,
            max_append_request_bytes(limits) + 1024 * 1024,
            max_snapshot_request_bytes(limits) + 1024 * 1024,
        ),
    )
    # The largest read, subscription or snapshot message (start-up checked that clients take it).
    send = min(GRPC_MAX_MESSAGE_BYTES, max(receive, max_server_message_bytes(limits)))
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", receive),
            ("grpc.max_send_message_length", send),
            # Only a worker shares its port (with the other workers of its supervisor): any
            # other server must fail to bind a port in use, not silently share it with whatever
            # holds it (seen in the suite: a restarted server got another test's connections).
            ("grpc.so_reuseport", int(settings.worker is not None)),
            # HTTP/2 flow control bounds what a caller sends before we answer: a fixed 1 MiB
            # window per stream. gRPC's bandwidth probing grows windows as fast as data
            # arrives, and under load (the refusal slower to come) 160 unauthenticated 8 MiB
            # appends, refused from their headers, still grew the server by 925 MiB.
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", 1024 * 1024),
        ],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
    )
    deferred = DeferredServicer()
    certificates = settings.tls_client_ca_file is not None
    add_service(
        server,
        SERVICE,
        deferred,
        around=lambda handler: CredentialGate(handler, authenticator, certificates),
        prechecks={"Append": append_precheck(limits)},
    )
    health_servicer = health_aio.HealthServicer()
    add_service(server, HEALTH_SERVICE, health_servicer, refuse_undecodable)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    credentials = settings.server_credentials()
    try:
        if credentials is None:
            port = server.add_insecure_port(settings.listen)
        else:
            port = server.add_secure_port(settings.listen, credentials)
    except RuntimeError:  # gRPC's "Failed to bind" (e.g. the port is in use)
        port = 0
    if port == 0:
        raise StartupFailed(f"cannot listen on {settings.listen} (in use?)")
    private_dir = None
    if settings.http_listen:
        # The REST face's way in: a Unix socket in a directory only this user can enter
        # (mkdtemp: 0700), plaintext and without certificates. Callers still authenticate
        # with their API key, which the face passes on; the socket only spares a TLS
        # handshake with ourselves and a port anyone could reach.
        private_dir = tempfile.mkdtemp(prefix="eventstore-rest-")
        server.add_insecure_port(f"unix:{private_dir}/grpc.sock")
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    gateway, http_port = None, 0
    if private_dir is not None:
        gateway = Gateway(
            SERVICE,
            f"unix:{private_dir}/grpc.sock",
            authenticator,
            certificates,
            # JSON carries bytes as base64 (4/3) beside the fields' names: room for the
            # largest request gRPC takes, which then refuses what is too large by its rules.
            max_body_bytes=receive * 4 // 3 + 1024 * 1024,
        )
        try:
            http_port = await gateway.start(
                settings.http_listen,
                settings.http_ssl_context(),
                shared=settings.worker is not None,
            )
        except OSError as exc:
            await server.stop(0)
            shutil.rmtree(private_dir, ignore_errors=True)
            raise StartupFailed(
                f"cannot listen on {settings.http_listen} (EVENTSTORE_HTTP_LISTEN): {exc}"
            ) from exc
    health_server = await _health_only_server(
        settings.health_listen, health_servicer, shared=settings.worker is not None
    )
    watcher = (
        asyncio.create_task(permissions.watch(settings.permissions_reload_s), name="permissions")
        if permissions is not None
        else None
    )
    return RunningServer(
        settings,
        server,
        deferred,
        health_servicer,
        port,
        Admission(),
        authenticator,
        permissions,
        watcher,
        health_server,
        gateway=gateway,
        http_port=http_port,
        private_dir=private_dir,
    )


async def _health_only_server(
    address: str, servicer: health_aio.HealthServicer, shared: bool
) -> grpc.aio.Server | None:
    """Kubernetes' gRPC probes speak no TLS: they get the health service alone, in plaintext,
    on its own port. It shares the servicer, so it reports exactly what the main port does."""
    if not address:
        return None
    server = grpc.aio.server(options=[("grpc.so_reuseport", int(shared))])  # workers share it
    add_service(server, HEALTH_SERVICE, servicer, refuse_undecodable)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:  # gRPC's "Failed to bind" (e.g. the port is in use)
        port = 0
    if port == 0:
        raise StartupFailed(f"cannot listen on {address} (EVENTSTORE_HEALTH_LISTEN; in use?)")
    await server.start()
    return server


async def start(settings: ServerSettings, components: Components | None = None) -> RunningServer:
    """Listen, connect (or use the given components: tests pass fakes), and serve."""
    running = await listen(settings)
    try:
        await running.attach(components or await Components.build(settings))
    except BaseException:
        await running.stop(0)
        raise
    return running


class StartupFailed(Exception):
    pass


async def build_with_retries(settings: ServerSettings) -> Components:
    """Connect to the backends, retrying until `startup_timeout_s` (they may start after us)."""
    deadline = time.monotonic() + settings.startup_timeout_s
    delay = 0.5
    while True:
        try:
            return await Components.build(settings)
        except StorageUnavailable as exc:
            if time.monotonic() + delay > deadline:
                raise StartupFailed(
                    f"{exc} (gave up after {settings.startup_timeout_s:.0f} s; "
                    "check EVENTSTORE_CASSANDRA_HOSTS)"
                ) from exc
            log.warning("backend not reachable yet; retrying", error=str(exc), retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def serve(settings: ServerSettings) -> None:
    started = time.monotonic()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if settings.metrics_port:
        prometheus_client.start_http_server(settings.metrics_port, addr=settings.metrics_host)
    running = await listen(settings)
    if running.permissions is not None:
        # Rotate keys now rather than at the next poll: kill -HUP <pid>.
        reloads: set[asyncio.Task[bool]] = set()  # held, or the loop may drop them mid-way

        def reload_now(permissions: PolicyFile = running.permissions) -> None:
            task = loop.create_task(permissions.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, reload_now)
    host = settings.listen.rpartition(":")[0]
    log.info(
        "listening; connecting to the backends",
        address=f"{host}:{running.port}",
        http=f"{settings.http_listen.rpartition(':')[0]}:{running.http_port}"
        if running.gateway is not None
        else None,
    )
    connecting = asyncio.create_task(build_with_retries(settings))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not connecting.done():  # asked to stop while still connecting
        connecting.cancel()
        await running.stop(0)
        return
    stopping.cancel()
    try:
        components = connecting.result()
    except StartupFailed:
        await running.stop(0)
        raise
    try:
        await running.attach(components)
    except StorageUnavailable as exc:
        await running.stop(0)
        raise StartupFailed(
            f"{exc} (could not register this writer in {settings.startup_timeout_s:.0f} s)"
        ) from exc
    log.info(
        "eventstore server ready",
        address=f"{host}:{running.port}",
        keyspace=settings.cassandra.keyspace,
        pid=os.getpid(),
        startup_s=round(time.monotonic() - started, 2),
    )
    gauges = asyncio.create_task(_update_gauges(running), name="gauges")
    await stop.wait()
    log.info("shutting down", grace_s=settings.grace_period_s)
    gauges.cancel()
    await running.stop(settings.grace_period_s)
    log.info("stopped")


async def _update_gauges(running: RunningServer) -> None:
    publisher = running.components.publisher if running.components else None
    while True:
        if running.publication is not None:
            metrics.UNPUBLISHED_AGGREGATES.set(running.publication.backlog)
            metrics.PARKED_AGGREGATES.set(running.publication.parked_count)
            journal = running.publication.journal
            metrics.JOURNAL_OPEN_ENTRIES.set(journal.open_entries)
            metrics.JOURNAL_WRITES.set(journal.writes)
            metrics.JOURNAL_ANNOUNCEMENTS.set(journal.announced)
        if isinstance(publisher, KafkaEventPublisher):
            metrics.PRODUCER_QUEUE.set(publisher.queued())
        if running.share is not None:
            metrics.STORAGE_CALLS_WAITING.set(running.share.waiting())
        await asyncio.sleep(1)


def main() -> None:
    try:
        settings = load(ServerSettings)
        traced = load(TracingSettings)
    except ConfigError as exc:
        sys.stderr.write(f"eventstore-server: {exc}\n")
        raise SystemExit(2) from None
    configure_logging(settings.log_level, settings.log_format)
    if settings.processes > 1:
        # Before any gRPC or driver object exists: the workers are fresh interpreters.
        raise SystemExit(workers.run(settings))
    if settings.worker is not None:
        workers.follow_supervisor()
        structlog.contextvars.bind_contextvars(worker=settings.worker)
    if traced.enabled:
        tracing.configure("eventstore-server")
    try:
        asyncio.run(serve(settings))
    except PolicyError as exc:
        sys.stderr.write(f"eventstore-server: EVENTSTORE_PERMISSIONS_FILE: {exc}\n")
        raise SystemExit(2) from None
    except StartupFailed as exc:
        log.error("start-up failed", reason=str(exc))
        sys.stderr.write(f"eventstore-server: {exc}\n")
        raise SystemExit(1) from None
    finally:
        tracing.shutdown()  # exports the spans still buffered


if __name__ == "__main__":
    main()
