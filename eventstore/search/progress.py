"""Indexer progress reports: written by every indexer instance to the state index, combined by
the query side into one answer about how fresh the index is.

Each instance reports only the partitions it is assigned, under its own document id (two
replicas writing under one id overwrote each other, and freshness described one of them). A
partition moves between instances on a rebalance or a restart, and the instance it left may
still have a recent report naming it: the newest report that names a partition speaks for it,
so the two are never added up. Reports older than the maximum age are from instances that are
gone and are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

#: Indexer reports older than this are not counted (that instance is gone).
REPORT_MAX_AGE = timedelta(minutes=2)


@dataclass(frozen=True, slots=True)
class ProgressReport:
    instance: str
    reported_at: datetime
    #: lag per assigned partition ("topic[partition]"); -1 where the position is not known
    lags: Mapping[str, int]
    #: the newest recorded_at among the events this instance indexed
    max_recorded_at: datetime | None

    def to_document(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "reported_at": _iso(self.reported_at),
            "partitions": [{"partition": key, "lag": lag} for key, lag in self.lags.items()],
            "lag": -1 if any(lag < 0 for lag in self.lags.values()) else sum(self.lags.values()),
            "max_recorded_at": _iso(self.max_recorded_at) if self.max_recorded_at else None,
        }

    @classmethod
    def from_document(cls, source: Mapping[str, Any]) -> ProgressReport | None:
        reported_at = _parse_time(source.get("reported_at"))
        if reported_at is None:
            return None
        partitions = source.get("partitions") or []
        return cls(
            instance=str(source.get("instance", "")),
            reported_at=reported_at,
            lags={str(p["partition"]): int(p["lag"]) for p in partitions},
            max_recorded_at=_parse_time(source.get("max_recorded_at")),
        )


@dataclass(frozen=True, slots=True)
class Combined:
    #: total lag over every partition some live instance reports; -1 if any is unknown
    lag: int
    #: the oldest report that still speaks for some partition
    reported_at: datetime
    #: the oldest "indexed through" among those reports
    indexed_through: datetime | None


def combine(reports: Iterable[ProgressReport]) -> Combined | None:
    """One answer from live instances' reports (None: no instance reports any partition)."""
    claimed: dict[str, int] = {}
    speaking: list[ProgressReport] = []
    for report in sorted(reports, key=lambda r: r.reported_at, reverse=True):
        fresh = {key: lag for key, lag in report.lags.items() if key not in claimed}
        if not fresh:
            continue  # every partition it names has a newer report
        claimed.update(fresh)
        speaking.append(report)
    if not speaking:
        return None
    lags = claimed.values()
    through = [r.max_recorded_at for r in speaking if r.max_recorded_at is not None]
    return Combined(
        lag=-1 if any(lag < 0 for lag in lags) else sum(lags),
        reported_at=min(r.reported_at for r in speaking),
        indexed_through=min(through) if through else None,
    )


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds")


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
