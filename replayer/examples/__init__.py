"""Example reducers for eventstore-replay."""
