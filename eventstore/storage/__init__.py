"""Event storage adapters: Cassandra (production) and an in-memory fake (unit tests)."""
