"""Fan-out of committed events: the Kafka adapter and its wire format."""
