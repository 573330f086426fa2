"""Indexer progress reports: written by every indexer instance to the state index, combined by
the query side into one answer about how fresh the index is.

Each instance reports only the partitions it is assigned, under its own document id (two
replicas writing under one id overwrote each other, and freshness described one of them). A
partition moves between instances on a rebalance or a restart, and the instance it left may
still have a recent report naming it: the newest report that names a partition speaks for it,
so the two are never added up. Reports older than the maximum age are from instances that are
gone and are ignored.

Each partition is one aggregate type's topic, so a caller limited to some types is told about
their partitions only: the lag and times of other types would say when and how much they
were written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

#: Indexer reports older than this are not counted (that instance is gone).
REPORT_MAX_AGE = timedelta(minutes=2)


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    #: records not yet indexed; -1 where the position is not known
    lag: int
    #: the newest recorded_at indexed from this partition by this instance
    indexed_through: datetime | None = None


@dataclass(frozen=True, slots=True)
class ProgressReport:
    instance: str
    reported_at: datetime
    #: per assigned partition, keyed by partition_key(topic, partition)
    partitions: Mapping[str, PartitionProgress]

    def to_document(self) -> dict[str, Any]:
        lags = [p.lag for p in self.partitions.values()]
        return {
            "instance": self.instance,
            "reported_at": _iso(self.reported_at),
            "partitions": [
                {
                    "partition": key,
                    "lag": p.lag,
                    "indexed_through": _iso(p.indexed_through) if p.indexed_through else None,
                }
                for key, p in self.partitions.items()
            ],
            "lag": -1 if any(lag < 0 for lag in lags) else sum(lags),
        }

    @classmethod
    def from_document(cls, source: Mapping[str, Any]) -> ProgressReport | None:
        reported_at = _parse_time(source.get("reported_at"))
        if reported_at is None:
            return None
        return cls(
            instance=str(source.get("instance", "")),
            reported_at=reported_at,
            partitions={
                str(p["partition"]): PartitionProgress(
                    int(p["lag"]), _parse_time(p.get("indexed_through"))
                )
                for p in source.get("partitions") or []
            },
        )


def partition_key(topic: str, partition: int) -> str:
    return f"{topic}[{partition}]"


def topic_of(key: str) -> str:
    return key.rpartition("[")[0]


@dataclass(frozen=True, slots=True)
class Combined:
    #: total lag over every partition some live instance reports; -1 if any is unknown
    lag: int
    #: the oldest report that still speaks for some partition
    reported_at: datetime
    #: the newest recorded_at indexed from those partitions
    indexed_through: datetime | None


def combine(
    reports: Iterable[ProgressReport], wanted: Callable[[str], bool] = lambda topic: True
) -> Combined | None:
    """One answer from live instances' reports about the partitions of the `wanted` topics
    (None: no instance reports any)."""
    claimed: dict[str, PartitionProgress] = {}
    speaking: list[ProgressReport] = []
    for report in sorted(reports, key=lambda r: r.reported_at, reverse=True):
        fresh = {
            key: progress
            for key, progress in report.partitions.items()
            if key not in claimed and wanted(topic_of(key))
        }
        if not fresh:
            continue  # every partition it names has a newer report, or is not wanted
        claimed.update(fresh)
        speaking.append(report)
    if not speaking:
        return None
    lags = [p.lag for p in claimed.values()]
    through = [p.indexed_through for p in claimed.values() if p.indexed_through is not None]
    return Combined(
        lag=-1 if any(lag < 0 for lag in lags) else sum(lags),
        reported_at=min(r.reported_at for r in speaking),
        indexed_through=max(through) if through else None,
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
