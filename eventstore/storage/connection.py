"""One Cassandra cluster connection, shared by the adapters of a process."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from cassandra import ConsistencyLevel
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    Session,
)
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import dict_factory

from eventstore.config import CassandraSettings
from eventstore.domain.errors import StorageUnavailable
from eventstore.storage.aio import translated


def make_cluster(settings: CassandraSettings) -> Cluster:
    hosts, port = settings.contact_points()
    # Token-aware routing sends each statement (and each LWT retry) to a replica of its
    # partition: fewer hops and less Paxos contention.
    balancing = TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=settings.local_datacenter))
    profile = ExecutionProfile(
        load_balancing_policy=balancing,
        request_timeout=settings.request_timeout_s,
        consistency_level=ConsistencyLevel.name_to_value[settings.read_consistency],
        # Rows as dicts: the default named-tuple factory builds a class per result (3% of
        # the server's CPU under single-event appends). An LWT's flag is the key "[applied]".
        row_factory=dict_factory,
    )
    auth = None
    if settings.username and settings.password:
        auth = PlainTextAuthProvider(settings.username, settings.password.get_secret_value())
    return Cluster(
        hosts,
        port=port,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        auth_provider=auth,
        protocol_version=5,
        connect_timeout=settings.request_timeout_s,
        # The control connection reads the whole schema when it opens; the driver's 2 s
        # default failed first connects on a loaded host (one worker of a CI run lost all its
        # tests to it).
        control_connection_timeout=settings.request_timeout_s,
        ssl_context=settings.ssl_context(),
        # The driver's defaults (30 s + 30 s) kept sending appends to a node stopped with
        # SIGSTOP for its whole pause: each timed out after request_timeout_s, and so did the
        # client's retries that landed on it (appends held 20 s). It marks a node down only
        # when its connection fails, and a hung node's does not; an unanswered heartbeat does.
        # (5 s + 5 s let a hung node stall every writer for 13.7 s in the same test.)
        idle_heartbeat_interval=settings.heartbeat_interval_s,
        idle_heartbeat_timeout=settings.heartbeat_timeout_s,
    )


class Levels(NamedTuple):
    """The driver's consistency levels the settings name, for the adapters' statements."""

    write: int
    read: int
    serial: int


class CassandraConnection:
    def __init__(self, cluster: Cluster, session: Session, settings: CassandraSettings) -> None:
        self.cluster = cluster
        self.session = session
        self.settings = settings
        names = ConsistencyLevel.name_to_value
        self.levels = Levels(
            names[settings.write_consistency],
            names[settings.read_consistency],
            names[settings.serial_consistency],
        )

    @classmethod
    async def open(cls, settings: CassandraSettings) -> CassandraConnection:
        """Connect; the driver's connect blocks, so it runs off the event loop."""
        cluster = make_cluster(settings)
        try:
            with translated(f"cannot connect to Cassandra at {settings.hosts}"):
                session = await asyncio.to_thread(cluster.connect)
        except StorageUnavailable:
            cluster.shutdown()
            raise
        return cls(cluster, session, settings)

    async def close(self) -> None:
        await asyncio.to_thread(self.cluster.shutdown)
