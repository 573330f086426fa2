"""Development stack: real Cassandra, Kafka and OpenSearch on loopback, without Docker."""
