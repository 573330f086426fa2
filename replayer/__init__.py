"""eventstore-replay: rebuild state, export and re-publish history (see replayer/main.py)."""
