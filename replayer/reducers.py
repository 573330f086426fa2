"""What a user reducer receives, and how it is found."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from eventstore.domain.events import RecordedEvent
from eventstore.domain.personal import REDACTED_KEY, REDACTED_VALUE
from eventstore.domain.validation import is_json_content_type

Reducer = Callable[[Any, "ReplayEvent"], Any]


class ReplayError(Exception):
    """A failure to report in one line (exit code in `code`)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ReplayEvent:
    aggregate_id: str
    aggregate_type: str
    version: int
    event_type: str
    #: parsed JSON for JSON content types, else the raw bytes
    data: Any
    metadata: Mapping[str, str]
    recorded_at: datetime
    event_id: str

    @property
    def redacted(self) -> bool:
        """Its data subject was erased: the personal part is gone (the whole `data`: None for
        JSON, b"" otherwise; listed fields: null). Reducers must expect it."""
        return self.metadata.get(REDACTED_KEY) == REDACTED_VALUE

    @classmethod
    def of(cls, event: RecordedEvent) -> ReplayEvent:
        data: Any = event.data
        if is_json_content_type(event.content_type) and event.data:
            data = json.loads(event.data)
        elif is_json_content_type(event.content_type) and REDACTED_KEY in event.metadata:
            data = None  # the whole payload was personal, and its subject was erased
        return cls(
            aggregate_id=event.aggregate_id,
            aggregate_type=event.aggregate_type,
            version=event.version,
            event_type=event.event_type,
            data=data,
            metadata=event.metadata,
            recorded_at=event.recorded_at,
            event_id=str(event.event_id),
        )


def load_reducer(spec: str) -> Reducer:
    module_name, _, function = spec.partition(":")
    if not module_name or not function:
        raise ReplayError(f"--reducer must look like module:function, not {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ReplayError(
            f"cannot import reducer module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    reducer = getattr(module, function, None)
    if not callable(reducer):
        raise ReplayError(f"module {module_name!r} has no function {function!r}")
    return reducer  # type: ignore[no-any-return]


def state_type(spec: str) -> str:
    """The snapshot state_type for a reducer: only its own snapshots are reused."""
    return "json." + spec.replace(":", ".")
