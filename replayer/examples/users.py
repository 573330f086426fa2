"""The worked example of the product brief, as a reducer:

UserCreated{userId: 1, name: "Alice"} → UserNameUpdated{name: "Alicia"} → UserDeleted{userId: 1}

eventstore-replay state user-1 --reducer replayer.examples.users:reduce
→ "user does not exist"
"""

from __future__ import annotations

from typing import Any

from replayer.reducers import ReplayEvent


def reduce(state: Any, event: ReplayEvent) -> Any:
    if event.redacted:
        # Its data subject was erased (personal data): the person's details are gone for good.
        if event.event_type == "UserDeleted":
            return "user does not exist"
        return {**(state or {}), "name": None}
    if event.event_type == "UserCreated":
        return {"userId": event.data["userId"], "name": event.data["name"]}
    if event.event_type == "UserNameUpdated":
        return {**state, "name": event.data["name"]}
    if event.event_type == "UserDeleted":
        return "user does not exist"
    return state
