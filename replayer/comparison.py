"""Reconciliation without I/O: what Cassandra stores of an aggregate, what one copy of it
(the Kafka topic, the search index) holds, and what differs.

An event is identified by (aggregate_id, version, event_id). A copy whose event id is not the
stored one at its version (or whose version is not stored at all) is an *extra*: it stands for
no stored event. Memory per aggregate stays small: versions are kept as ranges (an aggregate's
versions nearly always form one range), the stored event ids as 16 bytes each.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID


@dataclass(frozen=True, slots=True)
class Window:
    """The times compared, in microseconds since the epoch: [start, end), and nothing
    recorded at or after `as_of` (the run's start: such events may still be in flight)."""

    start: int | None
    end: int | None
    as_of: int

    def contains(self, recorded_at: int) -> bool:
        """Whether a copy recorded then is in the range asked for (as_of included)."""
        return (
            (self.start is None or recorded_at >= self.start)
            and (self.end is None or recorded_at < self.end)
            and recorded_at < self.as_of
        )

    def recent(self, recorded_at: int) -> bool:
        """In the range asked for, but recorded at or after `as_of` (left out)."""
        return (
            recorded_at >= self.as_of
            and (self.start is None or recorded_at >= self.start)
            and (self.end is None or recorded_at < self.end)
        )


class Versions:
    """A set of versions, held as sorted disjoint ranges [start, end]."""

    __slots__ = ("_ends", "_starts")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def add(self, version: int) -> bool:
        """Add `version`; False if it was there already."""
        starts, ends = self._starts, self._ends
        # The usual case: the next version of an aggregate read in order.
        if ends and version == ends[-1] + 1:
            ends[-1] = version
            return True
        if not ends or version > ends[-1] + 1:
            starts.append(version)
            ends.append(version)
            return True
        i = bisect_right(starts, version) - 1  # the last range starting at or before it
        if i >= 0 and version <= ends[i]:
            return False
        joins_left = i >= 0 and ends[i] == version - 1
        joins_right = i + 1 < len(starts) and starts[i + 1] == version + 1
        if joins_left and joins_right:
            ends[i] = ends[i + 1]
            del starts[i + 1], ends[i + 1]
        elif joins_left:
            ends[i] = version
        elif joins_right:
            starts[i + 1] = version
        else:
            starts.insert(i + 1, version)
            ends.insert(i + 1, version)
        return True

    def __contains__(self, version: object) -> bool:
        if not isinstance(version, int):
            return False
        i = bisect_right(self._starts, version) - 1
        return i >= 0 and version <= self._ends[i]

    def __len__(self) -> int:
        return sum(end - start + 1 for start, end in zip(self._starts, self._ends, strict=True))

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __iter__(self) -> Iterator[int]:
        for start, end in self.ranges():
            yield from range(start, end + 1)

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))

    def minus(self, other: Versions) -> Iterator[int]:
        """The versions of this set that `other` lacks, ascending."""
        for start, end in self.ranges():
            version = start
            i = max(bisect_right(other._starts, start) - 1, 0)
            while version <= end:
                if i < len(other._starts) and other._starts[i] <= version:
                    if version <= other._ends[i]:
                        version = other._ends[i] + 1
                    i += 1
                    continue
                stop = end if i >= len(other._starts) else min(end, other._starts[i] - 1)
                yield from range(version, stop + 1)
                version = stop + 1


class Stored:
    """What Cassandra holds of one aggregate, fed its events in version order."""

    __slots__ = ("_ids", "aggregate_id", "aggregate_type", "head", "recent", "scope")

    def __init__(self, aggregate_id: str, aggregate_type: str | None = None) -> None:
        self.aggregate_id = aggregate_id
        #: None while it has no events
        self.aggregate_type = aggregate_type
        self.head = 0
        #: the versions to compare: in the time range asked for, recorded before `as_of`
        self.scope = Versions()
        #: events left out because they were recorded at or after `as_of`
        self.recent = 0
        self._ids = bytearray()

    def add(self, version: int, event_id: UUID, in_range: bool, recent: bool = False) -> None:
        if version > self.head + 1:  # a gap breaks invariant 1; keep the ids where they belong
            self._ids.extend(bytes(16 * (version - self.head - 1)))
        if version > self.head:
            self._ids.extend(event_id.bytes)
            self.head = version
        else:
            self._ids[16 * (version - 1) : 16 * version] = event_id.bytes
        if recent:
            self.recent += 1
        elif in_range:
            self.scope.add(version)

    def event_id(self, version: int) -> bytes | None:
        """The stored event id of `version` (16 bytes), None if it has no such version."""
        if not 1 <= version <= self.head:
            return None
        return bytes(self._ids[16 * (version - 1) : 16 * version])

    def ref(self, version: int) -> EventRef:
        stored = self.event_id(version)
        assert stored is not None
        return EventRef(version, UUID(bytes=stored))


@dataclass(frozen=True, slots=True, order=True)
class EventRef:
    version: int
    event_id: UUID


class Tally:
    """What one copy (the Kafka topic or the search index) holds of one aggregate, fed in the
    copy's own order (Kafka: offset order, partition by partition)."""

    __slots__ = (
        "extra",
        "high",
        "out_of_order",
        "partition",
        "pending",
        "repeated",
        "repeats",
        "seen",
        "split",
    )

    def __init__(self) -> None:
        #: versions with at least one copy of the stored event
        self.seen = Versions()
        #: the highest version among first copies so far
        self.high = 0
        #: versions whose first copy came after the first copy of a higher version
        self.out_of_order: list[int] = []
        #: copies beyond the first of a version
        self.repeats = 0
        #: version -> copies beyond the first (only where asked to keep it: the index)
        self.repeated: dict[int, int] = {}
        #: copies that stand for no stored event, in the time range asked for
        self.extra: list[EventRef] = []
        self.partition: int | None = None
        #: copies were found in more than one Kafka partition (no order between them)
        self.split = False
        #: observations of an aggregate not yet looked up in Cassandra, to replay later
        self.pending: list[tuple[int, bytes, bool, int]] = []

    def defer(self, version: int, event_id: bytes, in_range: bool, partition: int = 0) -> None:
        """Note a copy of an aggregate whose stored events are not known yet (resolve later)."""
        self.pending.append((version, event_id, in_range, partition))

    def resolve(self, stored: Stored | None, keep_repeated: bool = False) -> None:
        """Compare the deferred copies with `stored` (None: the store has no such aggregate)."""
        pending, self.pending = self.pending, []
        for version, event_id, in_range, partition in pending:
            self.observe(stored, version, event_id, in_range, partition, keep_repeated)

    def observe(
        self,
        stored: Stored | None,
        version: int,
        event_id: bytes,
        in_range: bool,
        partition: int = 0,
        keep_repeated: bool = False,
    ) -> None:
        """One copy: `in_range` says whether its own time is in the range asked for."""
        if stored is None or stored.event_id(version) != event_id:
            if in_range:
                self.extra.append(EventRef(version, UUID(bytes=event_id)))
            return
        if self.partition is None:
            self.partition = partition
        elif partition != self.partition:
            self.split = True
        if not self.seen.add(version):
            if version in stored.scope:
                self.repeats += 1
                if keep_repeated:
                    self.repeated[version] = self.repeated.get(version, 0) + 1
            return
        if version < self.high and version in stored.scope:
            self.out_of_order.append(version)
        self.high = max(self.high, version)


# --- findings ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KafkaFindings:
    """The topic compared with the store, for one aggregate."""

    #: stored events with no record (as found, before any republishing)
    missing: tuple[EventRef, ...] = ()
    #: versions whose first record came after the first record of a higher version
    out_of_order: tuple[int, ...] = ()
    #: records beyond the first of a version (at-least-once delivery allows them)
    repeats: int = 0
    #: records that stand for no stored event (unknown version, or another event id)
    extra: tuple[EventRef, ...] = ()
    #: the aggregate's records are in more than one partition: consumers see no order
    split: bool = False
    #: missing events sent again by this run
    republished: int = 0
    #: republished versions that arrived after a higher version (out of order now)
    late: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every stored event is (now) in order in the topic and nothing is extra."""
        unresolved = len(self.missing) - self.republished
        return not (unresolved or self.out_of_order or self.extra or self.split or self.late)

    def to_dict(self) -> dict[str, Any]:
        return {
            "missing": [_ref(r) for r in self.missing],
            "out_of_order": list(self.out_of_order),
            "repeats": self.repeats,
            "extra": [_ref(r) for r in self.extra],
            "split_partitions": self.split,
            "republished": self.republished,
            "late": list(self.late),
        }


@dataclass(frozen=True, slots=True)
class IndexFindings:
    """The search index compared with the store, for one aggregate."""

    missing: tuple[EventRef, ...] = ()
    #: (version, documents) where a stored event has more than one document
    repeated: tuple[tuple[int, int], ...] = ()
    #: documents that stand for no stored event
    extra: tuple[EventRef, ...] = ()

    @property
    def ok(self) -> bool:
        return not (self.missing or self.repeated or self.extra)

    def to_dict(self) -> dict[str, Any]:
        return {
            "missing": [_ref(r) for r in self.missing],
            "repeated": [{"version": v, "documents": n} for v, n in self.repeated],
            "extra": [_ref(r) for r in self.extra],
        }


@dataclass(frozen=True, slots=True)
class AggregateFindings:
    aggregate_id: str
    #: stored events compared
    events: int
    kafka: KafkaFindings = field(default_factory=KafkaFindings)
    index: IndexFindings = field(default_factory=IndexFindings)

    @property
    def ok(self) -> bool:
        return self.kafka.ok and self.index.ok

    @property
    def noteworthy(self) -> bool:
        """Anything to report, repeats included."""
        return not self.ok or self.kafka.repeats > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "aggregate_id": self.aggregate_id,
            "events": self.events,
            "kafka": self.kafka.to_dict(),
            "index": self.index.to_dict(),
        }


def _ref(ref: EventRef) -> dict[str, Any]:
    return {"version": ref.version, "event_id": str(ref.event_id)}


def kafka_findings(stored: Stored, tally: Tally) -> KafkaFindings:
    return KafkaFindings(
        missing=tuple(stored.ref(v) for v in stored.scope.minus(tally.seen)),
        out_of_order=tuple(tally.out_of_order),
        repeats=tally.repeats,
        extra=tuple(tally.extra),
        split=tally.split,
    )


def index_findings(stored: Stored, tally: Tally) -> IndexFindings:
    return IndexFindings(
        missing=tuple(stored.ref(v) for v in stored.scope.minus(tally.seen)),
        repeated=tuple((v, n + 1) for v, n in sorted(tally.repeated.items())),
        extra=tuple(tally.extra),
    )


def late_versions(found: KafkaFindings, tally: Tally) -> tuple[int, ...]:
    """Which missing versions, once sent now, arrive after a higher version's first record:
    those below the highest version the topic already holds."""
    return tuple(ref.version for ref in found.missing if ref.version < tally.high)


@dataclass(frozen=True, slots=True)
class Report:
    """The outcome of one reconciliation of an aggregate type."""

    aggregate_type: str
    #: events recorded at or after this time were not compared (they may be in flight)
    as_of: datetime
    #: the topic read, None when Kafka was not checked
    topic: str | None
    #: the index alias read, None when the index was not checked
    index: str | None
    #: aggregates with stored events compared
    aggregates: int
    #: stored events compared
    events: int
    #: stored events left out: recorded at or after `as_of`
    recent: int
    #: Kafka records read (the whole topic, up to its end when the run started)
    records: int
    #: index documents read (of the aggregate type, in the time range)
    documents: int
    #: Kafka records that are not an eventstore.v1.Event (skipped)
    undecodable: int
    #: aggregates with anything to report (repeats included), by aggregate id
    findings: tuple[AggregateFindings, ...]
    #: aggregates with stored events that the catalog does not list (found through the
    #: topic or the index; an aggregate in none of them cannot be found)
    uncataloged: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    #: seconds spent per step (open, catalog, cassandra, kafka, index, republish, total)
    timings: Mapping[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Nothing missing (or all of it republished in order), nothing out of order, no
        repeated document, nothing extra. Repeated Kafka records are allowed."""
        return all(f.ok for f in self.findings)

    @property
    def republished(self) -> int:
        return sum(f.kafka.republished for f in self.findings)

    def by_aggregate(self) -> dict[str, AggregateFindings]:
        return {f.aggregate_id: f for f in self.findings}

    def missing_from_kafka(self) -> dict[str, list[int]]:
        """aggregate id -> versions missing from the topic (as found)."""
        return {
            f.aggregate_id: [r.version for r in f.kafka.missing]
            for f in self.findings
            if f.kafka.missing
        }

    def missing_from_index(self) -> dict[str, list[int]]:
        """aggregate id -> versions with no document."""
        return {
            f.aggregate_id: [r.version for r in f.index.missing]
            for f in self.findings
            if f.index.missing
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "aggregate_type": self.aggregate_type,
            "as_of": self.as_of.isoformat(),
            "topic": self.topic,
            "index": self.index,
            "aggregates": self.aggregates,
            "events": self.events,
            "recent": self.recent,
            "records": self.records,
            "documents": self.documents,
            "undecodable": self.undecodable,
            "republished": self.republished,
            "uncataloged": list(self.uncataloged),
            "notes": list(self.notes),
            "timings": dict(self.timings),
            "findings": [f.to_dict() for f in self.findings],
        }
