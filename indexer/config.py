"""Settings of the indexer process (environment, prefix EVENTSTORE_INDEXER_ plus the shared
EVENTSTORE_KAFKA_* and EVENTSTORE_OPENSEARCH_* ones)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from eventstore.config import KafkaSettings, OpenSearchSettings


class IndexerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EVENTSTORE_INDEXER_", frozen=True)

    group_id: str = Field("eventstore-indexer", description="Kafka consumer group of all indexers")
    batch_size: int = Field(
        1000, ge=1, le=50_000, description="Records consumed (and committed) together, at most"
    )
    max_bulk_bytes: int = Field(
        10 * 1024 * 1024,
        ge=64 * 1024,
        le=1024 * 1024 * 1024,
        description="Bytes of one bulk request, at most (a batch is sent in as many as it takes; "
        "OpenSearch refuses more than http.max_content_length, 100 MB by default, and a request "
        "larger than its indexing-pressure limit, 10% of the heap)",
    )
    max_document_bytes: int = Field(
        4 * 1024 * 1024,
        ge=64 * 1024,
        le=64 * 1024 * 1024,
        description="Bytes of one document, at most: over it, the searchable copies of data "
        "and metadata are left out first, then the exact payload and metadata (index_notes "
        "says so)",
    )
    max_backoff_s: float = Field(10.0, gt=0, description="Longest wait between bulk retries")
    state_interval_s: float = Field(1.0, gt=0, description="How often progress is recorded")
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus port; 0: off")
    metrics_host: str = "127.0.0.1"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    opensearch: OpenSearchSettings = Field(default_factory=OpenSearchSettings)
