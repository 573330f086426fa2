"""Replay CLI (issue #6): not built yet."""
