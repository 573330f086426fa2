"""A reducer that counts events and sums their "n" (used to compare snapshot + tail with a
full replay)."""

from __future__ import annotations

from typing import Any

from replayer.reducers import ReplayEvent


def reduce(state: Any, event: ReplayEvent) -> Any:
    state = state or {"events": 0, "total": 0, "last_version": 0}
    return {
        "events": state["events"] + 1,
        "total": state["total"] + int(event.data.get("n", 0)),
        "last_version": event.version,
    }
