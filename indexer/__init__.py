"""Kafka → OpenSearch indexer (issue #5): not built yet."""
