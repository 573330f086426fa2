"""eventstore-indexer: mirrors the Kafka event topics into OpenSearch (see indexer/main.py)."""
