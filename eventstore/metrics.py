"""Prometheus metrics of the server. Collectors are module-level (the prometheus_client way);
the HTTP endpoint starts only from main(), on EVENTSTORE_METRICS_PORT."""

from __future__ import annotations

from prometheus_client import Gauge

UNPUBLISHED_AGGREGATES = Gauge(
    "eventstore_unpublished_aggregates",
    "Aggregates with committed events older than the relay's minimum age not yet in Kafka",
)
PRODUCER_QUEUE = Gauge(
    "eventstore_producer_queue_records", "Records handed to the Kafka producer, not yet confirmed"
)
