"""A history of appends and what the stores hold afterwards, and the checks that prove nothing
acknowledged was lost, duplicated, reordered or invented (issue #16).

A load generator records one `Op` per logical append (one set of event ids, however many
times it was sent) with its outcome: `ok` (acknowledged, with the versions the server gave),
`failed` (a definite refusal: nothing may have been written) or `unknown` (no answer that
says either way). `check` compares that with what Cassandra, Kafka and OpenSearch hold.

Exact-version appends make each aggregate a compare-and-set register, so the acknowledged
history must also be linearizable: an acknowledged append expecting version e holds versions
e+1.., and one that ended before another began holds the lower versions.
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["ok", "failed", "unknown"]

#: Per aggregate: (version, event id) in the order the store gave them.
Holding = Mapping[str, Sequence[tuple[int, str]]]


@dataclass
class Op:
    aggregate_id: str
    event_ids: tuple[str, ...]
    expected: int | None
    """The exact version expected; None for an append with any expected version."""
    started: float
    ended: float = 0.0
    outcome: Outcome = "unknown"
    first_version: int | None = None
    """Acknowledged ops: the version the server gave the first event."""
    attempts: int = 0
    """Client calls it took (each with the client's own retries inside)."""
    error: str = ""


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)

    def summary(self, started: float, ended: float, within_s: float = 0.2) -> dict[str, float]:
        """What issue #16 asks to report of a run: counts, the longest time without a
        successful append, and the share of appends acknowledged within `within_s` and at the
        first client call (within the client's own retry budget)."""
        acked = [op for op in self.ops if op.outcome == "ok"]
        latencies = sorted(op.ended - op.started for op in acked)
        ends = sorted([started, *(op.ended for op in acked), ended])
        return {
            "attempted": len(self.ops),
            "acknowledged": len(acked),
            "failed": sum(op.outcome == "failed" for op in self.ops),
            "unknown": sum(op.outcome == "unknown" for op in self.ops),
            "longest_without_success_s": max(b - a for a, b in itertools.pairwise(ends)),
            "share_within_200ms": (
                sum(latency <= within_s for latency in latencies) / len(self.ops)
                if self.ops
                else 0.0
            ),
            "share_within_client_retries": (
                sum(op.attempts == 1 for op in acked) / len(self.ops) if self.ops else 0.0
            ),
            "p50_ms": statistics.median(latencies) * 1000 if latencies else 0.0,
            "max_ms": latencies[-1] * 1000 if latencies else 0.0,
        }


def check(
    history: History,
    stored: Holding,
    published: Holding | None = None,
    indexed: Holding | None = None,
) -> list[str]:
    """Every way the stores disagree with the history; empty when they agree.

    `stored`: Cassandra's events per aggregate in version order. `published`: the Kafka
    records per aggregate in the order one consumer read them (duplicates allowed: publication
    is at least once). `indexed`: the OpenSearch documents per aggregate, any order.
    """
    problems: list[str] = []
    ops_by_id = {event_id: op for op in history.ops for event_id in op.event_ids}
    aggregates = {op.aggregate_id for op in history.ops} | set(stored)
    for aggregate in sorted(aggregates):
        events = list(stored.get(aggregate, ()))
        problems += _gapless(aggregate, events)
        problems += _once(aggregate, events, ops_by_id)
    for op in history.ops:
        problems += _outcome_holds(op, stored.get(op.aggregate_id, ()))
    problems += _linearizable(history)
    if published is not None:
        for aggregate in sorted(aggregates):
            problems += _published(aggregate, stored.get(aggregate, ()), published.get(aggregate))
    if indexed is not None:
        for aggregate in sorted(aggregates):
            want = Counter(stored.get(aggregate, ()))
            have = Counter(indexed.get(aggregate, ()))
            if want != have:
                problems.append(
                    f"{aggregate}: OpenSearch holds {sorted(have.elements())[:6]}… "
                    f"({sum(have.values())} documents) for the stored "
                    f"{sorted(want.elements())[:6]}… ({sum(want.values())} events)"
                )
    return problems


def _gapless(aggregate: str, events: Sequence[tuple[int, str]]) -> list[str]:
    versions = [version for version, _ in events]
    if versions != list(range(1, len(versions) + 1)):
        return [f"{aggregate}: stored versions {versions[:20]} are not 1..{len(versions)}"]
    return []


def _once(
    aggregate: str, events: Sequence[tuple[int, str]], ops_by_id: Mapping[str, Op]
) -> list[str]:
    problems = []
    for event_id, times in Counter(event_id for _, event_id in events).items():
        if times > 1:
            problems.append(f"{aggregate}: event {event_id} stored {times} times")
    for version, event_id in events:
        op = ops_by_id.get(event_id)
        if op is None or op.aggregate_id != aggregate:
            problems.append(f"{aggregate}: version {version} holds {event_id}, never appended")
    return problems


def _outcome_holds(op: Op, events: Iterable[tuple[int, str]]) -> list[str]:
    where = {event_id: version for version, event_id in events}
    found = [where.get(event_id) for event_id in op.event_ids]
    present = [v for v in found if v is not None]
    name = f"{op.aggregate_id}: {op.outcome} append of {op.event_ids[0]}…"
    if op.outcome == "failed" and present:
        return [f"{name} refused ({op.error}) yet stored at versions {present}"]
    if present and len(present) != len(found):
        return [f"{name} only partly stored: {found}"]
    if present and present != list(range(present[0], present[0] + len(present))):
        return [f"{name} stored at non-consecutive versions {present}"]
    if op.outcome == "ok":
        if not present:
            return [f"{name} acknowledged at version {op.first_version} but not stored (lost)"]
        if present[0] != op.first_version:
            return [f"{name} acknowledged at version {op.first_version}, stored at {present[0]}"]
    return []


def _linearizable(history: History) -> list[str]:
    problems = []
    acked: dict[str, list[Op]] = {}
    for op in history.ops:
        if op.outcome == "ok" and op.first_version is not None:
            acked.setdefault(op.aggregate_id, []).append(op)
            if op.expected is not None and op.first_version != op.expected + 1:
                problems.append(
                    f"{op.aggregate_id}: append expecting version {op.expected} acknowledged "
                    f"at {op.first_version}"
                )
    for aggregate, ops in acked.items():
        ops.sort(key=lambda op: op.started)
        for i, earlier in enumerate(ops):
            for later in ops[i + 1 :]:
                assert earlier.first_version is not None
                assert later.first_version is not None
                if earlier.ended < later.started and earlier.first_version > later.first_version:
                    problems.append(
                        f"{aggregate}: an append acknowledged at version "
                        f"{earlier.first_version} ended before one acknowledged at "
                        f"{later.first_version} began"
                    )
    return problems


def _published(
    aggregate: str, stored: Sequence[tuple[int, str]], records: Sequence[tuple[int, str]] | None
) -> list[str]:
    """At least once, in order: with repeats dropped, exactly the stored events in version
    order (a repeat is a record of a version already read, with the same event id)."""
    seen: dict[int, str] = {}
    order: list[int] = []
    problems = []
    for version, event_id in records or ():
        if version in seen:
            if seen[version] != event_id:
                problems.append(
                    f"{aggregate}: Kafka holds two events at version {version}: "
                    f"{seen[version]} and {event_id}"
                )
            continue
        seen[version] = event_id
        order.append(version)
    if order != sorted(order):
        problems.append(f"{aggregate}: Kafka order {order[:20]} is not version order")
    if dict(stored) != seen:
        missing = sorted(set(dict(stored)) - set(seen))
        extra = sorted(set(seen) - set(dict(stored)))
        problems.append(
            f"{aggregate}: Kafka lacks versions {missing[:10]} and has unstored {extra[:10]}"
        )
    return problems
