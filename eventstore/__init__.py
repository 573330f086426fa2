"""Event store for microservices: Cassandra for the log, Kafka for fan-out, OpenSearch for
queries."""
