"""Snapshots: an aggregate's state as of one version, to rebuild from without replaying all."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Snapshot:
    aggregate_id: str
    version: int
    state: bytes
    state_type: str
    schema_version: int
    created_at: datetime
