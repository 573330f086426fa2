"""Prometheus metrics of the server. Collectors are module-level (the prometheus_client way);
the HTTP endpoint starts only from main(), on EVENTSTORE_METRICS_PORT."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

UNPUBLISHED_AGGREGATES = Gauge(
    "eventstore_unpublished_aggregates",
    "Aggregates the relay is catching up now or has parked (committed events not yet in Kafka)",
)
PARKED_AGGREGATES = Gauge(
    "eventstore_parked_aggregates",
    "Aggregates whose publication keeps failing for a reason of their own (eventstore-replay "
    "parked lists them); each is retried with its own backoff and blocks no other",
)
JOURNAL_WRITES = Gauge(
    "eventstore_journal_writes",
    "Journal writes (group commits) since start; compare to announcements",
)
JOURNAL_ANNOUNCEMENTS = Gauge(
    "eventstore_journal_announcements", "Appends announced in the journal since start"
)
RELAY_ROUND = Histogram(
    "eventstore_relay_round_seconds",
    "Time the relay spends per round finding work (must stay flat however long the service runs)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
JOURNAL_OPEN_ENTRIES = Gauge(
    "eventstore_journal_open_entries",
    "Journal entries of this process not yet settled (appends in flight or awaiting Kafka)",
)
PRODUCER_QUEUE = Gauge(
    "eventstore_producer_queue_records", "Records handed to the Kafka producer, not yet confirmed"
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
SUBSCRIPTIONS = Gauge("eventstore_subscriptions_active", "Subscribe streams open now")
PUBLISH_LAG = Histogram(
    "eventstore_publish_lag_seconds",
    "From the commit of an append to Kafka confirming its events (request path)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0),
)


class SubscriptionLag:
    """Sums the lag the open subscriptions report into one gauge."""

    def __init__(self) -> None:
        self._lags: dict[object, int] = {}
        SUBSCRIPTION_LAG.set_function(lambda: float(sum(self._lags.values())))

    def report(self, subscription: object, lag: int | None) -> None:
        if lag is None:
            self._lags.pop(subscription, None)
        else:
            self._lags[subscription] = lag


SUBSCRIPTION_LAG = Gauge(
    "eventstore_subscription_lag_records",
    "Records the open wide subscriptions still have to read to reach the end of the log",
)

POLICY_RELOADS = Counter(
    "eventstore_permission_file_reloads",
    "Changes of the permission file seen, by outcome (applied, or failed and ignored)",
    ["outcome"],
)
