"""Prometheus metrics of the server. Collectors are module-level (the prometheus_client way);
the HTTP endpoint starts only from main(), on EVENTSTORE_METRICS_PORT.

With EVENTSTORE_PROCESSES > 1 the supervisor serves the workers' metrics together
(prometheus_client's multiprocess mode, eventstore/workers.py): counters and histograms add up;
each gauge says how ("livesum": the sum over the workers running now)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

UNPUBLISHED_AGGREGATES = Gauge(
    "eventstore_unpublished_aggregates",
    "Aggregates the relay is catching up now or has parked (committed events not yet in Kafka)",
    multiprocess_mode="livesum",
)
PARKED_AGGREGATES = Gauge(
    "eventstore_parked_aggregates",
    "Aggregates whose publication keeps failing for a reason of their own (eventstore-replay "
    "parked lists them); each is retried with its own backoff and blocks no other",
    multiprocess_mode="livesum",
)
JOURNAL_WRITES = Gauge(
    "eventstore_journal_writes",
    "Journal writes (group commits) since start; compare to announcements",
    multiprocess_mode="livesum",
)
JOURNAL_ANNOUNCEMENTS = Gauge(
    "eventstore_journal_announcements",
    "Appends announced in the journal since start",
    multiprocess_mode="livesum",
)
RELAY_ROUND = Histogram(
    "eventstore_relay_round_seconds",
    "Time the relay spends per round finding work (must stay flat however long the service runs)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
JOURNAL_OPEN_ENTRIES = Gauge(
    "eventstore_journal_open_entries",
    "Journal entries of this process not yet settled (appends in flight or awaiting Kafka)",
    multiprocess_mode="livesum",
)
PRODUCER_QUEUE = Gauge(
    "eventstore_producer_queue_records",
    "Records handed to the Kafka producer, not yet confirmed",
    multiprocess_mode="livesum",
)
STORAGE_CALLS_WAITING = Gauge(
    "eventstore_storage_calls_waiting",
    "Storage calls for callers waiting for a fair-share slot (all "
    "EVENTSTORE_LIMIT_STORAGE_CALLS_IN_FLIGHT taken)",
    multiprocess_mode="livesum",
)

RPC_REQUESTS = Counter(
    "eventstore_rpc_requests", "RPCs finished, by method and status code", ["method", "code"]
)
RPC_LATENCY = Histogram(
    "eventstore_rpc_latency_seconds",
    "Time to answer a unary RPC (to the end of the stream for streaming ones)",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 10.0),
)
APPEND_CONFLICTS = Counter(
    "eventstore_append_conflicts", "Appends refused because the expected version did not hold"
)
GROUP_MEMBERS = Gauge(
    "eventstore_group_members_active",
    "SubscribeGroup streams (consumer group members) open now",
    multiprocess_mode="livesum",
)
GROUP_DELIVERIES = Counter(
    "eventstore_group_deliveries",
    "Events handed to consumer group members, by attempt: first, or retry (after a nack, an "
    "ack timeout or a member gone)",
    ["attempt"],
)
GROUP_PARKED = Counter(
    "eventstore_group_parked", "Events a consumer group parked after their last attempt failed"
)
SUBSCRIPTIONS = Gauge(
    "eventstore_subscriptions_active", "Subscribe streams open now", multiprocess_mode="livesum"
)
PUBLISH_LAG = Histogram(
    "eventstore_publish_lag_seconds",
    "From the commit of an append to Kafka confirming its events (request path)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0),
)


class SubscriptionLag:
    """Sums the lag the open subscriptions report into one gauge."""

    def __init__(self) -> None:
        self._lags: dict[object, int] = {}
        self._total = 0

    def report(self, subscription: object, lag: int | None) -> None:
        # A value set, not a callback: the multiprocess collector reads the workers' files only.
        self._total -= self._lags.pop(subscription, 0)
        if lag is not None:
            self._lags[subscription] = lag
            self._total += lag
        SUBSCRIPTION_LAG.set(self._total)


SUBSCRIPTION_LAG = Gauge(
    "eventstore_subscription_lag_records",
    "Records the open wide subscriptions still have to read to reach the end of the log",
    multiprocess_mode="livesum",
)

POLICY_RELOADS = Counter(
    "eventstore_permission_file_reloads",
    "Changes of the permission file seen, by outcome (applied, or failed and ignored)",
    ["outcome"],
)
