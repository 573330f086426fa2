"""The human-readable form of a reconciliation report (eventstore-replay verify)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from replayer.comparison import AggregateFindings, EventRef, Report

#: Aggregates listed in detail; the rest are counted (--json lists them all).
SHOWN_AGGREGATES = 50
#: Version ranges shown per list.
SHOWN_RANGES = 8


def ranges(versions: Iterable[int]) -> str:
    """'3-5, 9, 12-13' (ascending input), shortened after SHOWN_RANGES ranges."""
    spans: list[tuple[int, int]] = []
    for version in versions:
        if spans and version == spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], version)
        else:
            spans.append((version, version))
    shown = [f"{a}" if a == b else f"{a}-{b}" for a, b in spans[:SHOWN_RANGES]]
    if len(spans) > SHOWN_RANGES:
        shown.append(f"… ({len(spans) - SHOWN_RANGES} more ranges)")
    return ", ".join(shown)


def _count(items: int, noun: str) -> str:
    return f"{items:,} {noun}{'' if items == 1 else 's'}"


def _across(findings: list[AggregateFindings], amount: int, what: str) -> str:
    if not amount:
        return f"0 {what}"
    return f"{amount:,} {what} in {_count(len(findings), 'aggregate')}"


def render(report: Report) -> str:
    lines = [
        f"Reconciliation of aggregate type {report.aggregate_type!r}, "
        f"as of {report.as_of.isoformat(timespec='milliseconds')}",
        f"  Cassandra: {_count(report.aggregates, 'aggregate')}, "
        f"{_count(report.events, 'event')} compared"
        + (f" ({report.recent:,} recorded since the start left out)" if report.recent else ""),
    ]
    findings = list(report.findings)
    if report.topic is not None:
        missing = [f for f in findings if f.kafka.missing]
        disorder = [f for f in findings if f.kafka.out_of_order or f.kafka.split]
        repeats = [f for f in findings if f.kafka.repeats]
        extra = [f for f in findings if f.kafka.extra]
        order = _across(disorder, sum(len(f.kafka.out_of_order) for f in disorder), "out of order")
        if any(f.kafka.split for f in disorder):
            order += " (records in several partitions)"
        counts = [
            _across(missing, sum(len(f.kafka.missing) for f in missing), "missing"),
            order,
            _across(extra, sum(len(f.kafka.extra) for f in extra), "extra"),
            _across(repeats, sum(f.kafka.repeats for f in repeats), "repeats") + " (allowed)",
        ]
        lines.append(
            f"  Kafka topic {report.topic}: {_count(report.records, 'record')} read; "
            + "; ".join(counts)
        )
        if report.undecodable:
            lines.append(f"  {_count(report.undecodable, 'copy')} could not be decoded (skipped)")
        republished = [f for f in findings if f.kafka.republished]
        if republished:
            late = sum(len(f.kafka.late) for f in republished)
            lines.append(
                f"  Republished {_count(report.republished, 'event')} to {report.topic}"
                + (
                    f"; {late:,} of them arrived after a later version (out of order now)"
                    if late
                    else ", in order"
                )
            )
    else:
        lines.append("  Kafka: not checked")
    if report.index is not None:
        missing = [f for f in findings if f.index.missing]
        repeated = [f for f in findings if f.index.repeated]
        extra = [f for f in findings if f.index.extra]
        lines.append(
            f"  Index {report.index}: {_count(report.documents, 'document')} read; "
            + "; ".join(
                [
                    _across(missing, sum(len(f.index.missing) for f in missing), "missing"),
                    _across(repeated, sum(len(f.index.repeated) for f in repeated), "repeated"),
                    _across(extra, sum(len(f.index.extra) for f in extra), "extra"),
                ]
            )
        )
    else:
        lines.append("  Index: not checked")
    if report.uncataloged:
        names = ", ".join(report.uncataloged[:5]) + (", …" if len(report.uncataloged) > 5 else "")
        lines.append(
            f"  {_count(len(report.uncataloged), 'aggregate')} with events missing from the "
            f"catalog (found through the topic or the index; compared): {names}"
        )
    problems = [f for f in findings if not f.ok]
    if problems:
        lines.append("")
        for outcome in problems[:SHOWN_AGGREGATES]:
            lines.extend(_aggregate(outcome))
        if len(problems) > SHOWN_AGGREGATES:
            lines.append(
                f"… and {len(problems) - SHOWN_AGGREGATES:,} more aggregates (--json lists all)"
            )
    for note in report.notes:
        lines.append(f"note: {note}")
    if report.timings:
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in report.timings.items() if k != "total")
        lines.append(f"took {report.timings.get('total', 0):.1f} s ({steps})")
    lines.append("")
    if report.ok:
        lines.append(
            "OK: every stored event compared is in the copies checked"
            + (" (after republishing)" if report.republished else "")
        )
    else:
        lines.append(f"PROBLEMS in {_count(len(problems), 'aggregate')}")
    return "\n".join(lines) + "\n"


def _aggregate(outcome: AggregateFindings) -> list[str]:
    lines = [f"{outcome.aggregate_id} ({_count(outcome.events, 'event')} compared):"]
    kafka, index = outcome.kafka, outcome.index
    parts = []
    if kafka.missing:
        parts.append(f"missing {ranges(r.version for r in kafka.missing)}")
        if kafka.republished:
            parts.append("republished")
    if kafka.out_of_order:
        parts.append(f"out of order {ranges(kafka.out_of_order)}")
    if kafka.late:
        parts.append(f"republished after a later version {ranges(kafka.late)}")
    if kafka.split:
        parts.append("records in several partitions")
    if kafka.extra:
        parts.append(f"extra {_extra(kafka.extra)}")
    if kafka.repeats:
        parts.append(f"{_count(kafka.repeats, 'repeat')}")
    if parts:
        lines.append("  Kafka: " + "; ".join(parts))
    parts = []
    if index.missing:
        parts.append(f"missing {ranges(r.version for r in index.missing)}")
    if index.repeated:
        parts.append(
            "repeated "
            + ", ".join(f"{v} ({n} documents)" for v, n in index.repeated[:SHOWN_RANGES])
            + (" …" if len(index.repeated) > SHOWN_RANGES else "")
        )
    if index.extra:
        parts.append(f"extra {_extra(index.extra)}")
    if parts:
        lines.append("  index: " + "; ".join(parts))
    return lines


def _extra(refs: Sequence[EventRef]) -> str:
    items = list(refs)
    shown = [f"v{r.version} ({r.event_id})" for r in items[:3]]
    return ", ".join(shown) + (f" and {len(items) - 3} more" if len(items) > 3 else "")
