"""Indexer progress reports combine into one freshness answer across instances, about the
partitions (aggregate types' topics) the caller may know of."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from eventstore.search.progress import PartitionProgress, ProgressReport, combine, partition_key

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def report(
    instance: str, seconds: float, lags: dict[str, int], through_s: float | None = None
) -> ProgressReport:
    through = None if through_s is None else at(through_s)
    return ProgressReport(
        instance=instance,
        reported_at=at(seconds),
        partitions={key: PartitionProgress(lag, through) for key, lag in lags.items()},
    )


def test_instances_with_disjoint_partitions_add_up() -> None:
    combined = combine(
        [report("a", 1, {"t[0]": 3, "t[1]": 0}, through_s=-5), report("b", 2, {"t[2]": 4}, -2)]
    )
    assert combined is not None
    assert combined.lag == 7
    assert combined.reported_at == at(1)
    assert combined.indexed_through == at(-2)  # the newest event indexed


def test_a_partition_counts_once_and_its_newest_report_speaks_for_it() -> None:
    # "old" owned every partition before a rebalance moved t[1] to "new".
    old = report("old", 1, {"t[0]": 2, "t[1]": 50}, through_s=-60)
    new = report("new", 3, {"t[1]": 1}, through_s=-1)
    combined = combine([old, new])
    assert combined is not None
    assert combined.lag == 2 + 1


def test_a_report_superseded_on_every_partition_is_ignored() -> None:
    # A restarted instance (new id) took over all of a previous one's partitions.
    gone = report("gone", 1, {"t[0]": 90, "t[1]": 90}, through_s=600)
    alive = report("alive", 2, {"t[0]": 0, "t[1]": 0}, through_s=-1)
    combined = combine([gone, alive])
    assert combined is not None
    assert (combined.lag, combined.reported_at) == (0, alive.reported_at)
    assert combined.indexed_through == at(-1)


def test_only_the_wanted_topics_are_told_about() -> None:
    # A caller limited to Orders learns nothing of Payments: not its lag, not its times.
    orders = report("a", 1, {"events.Order[0]": 2}, through_s=-30)
    payments = report("b", 2, {"events.Payment[0]": 500}, through_s=-1)
    combined = combine([orders, payments], wanted={"events.Order"}.__contains__)
    assert combined is not None
    assert (combined.lag, combined.reported_at, combined.indexed_through) == (2, at(1), at(-30))
    assert combine([payments], wanted={"events.Order"}.__contains__) is None


def test_an_unknown_lag_makes_the_total_unknown() -> None:
    combined = combine([report("a", 1, {"t[0]": -1}), report("b", 1, {"t[1]": 5})])
    assert combined is not None
    assert combined.lag == -1


def test_no_instance_with_partitions_means_no_answer() -> None:
    assert combine([]) is None
    assert combine([report("idle", 1, {})]) is None


def test_documents_round_trip() -> None:
    key = partition_key("events.Order", 2)
    assert key == "events.Order[2]"
    original = report("a", 1, {"t[0]": 3, key: 0}, through_s=-5)
    document = original.to_document()
    assert document["lag"] == 3
    assert ProgressReport.from_document(document) == original
    assert ProgressReport.from_document({"reported_at": "not a time"}) is None
