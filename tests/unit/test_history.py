"""The history checker the fault tests rely on must itself catch each kind of loss."""

from __future__ import annotations

import pytest

from tests.history import History, Op, check


def op(
    aggregate: str,
    ids: str,
    outcome: str = "ok",
    first: int | None = None,
    expected: int | None = None,
    at: tuple[float, float] = (0.0, 1.0),
) -> Op:
    made = Op(aggregate, tuple(ids), expected, started=at[0], ended=at[1], attempts=1)
    made.outcome = outcome  # type: ignore[assignment]
    made.first_version = first
    return made


def clean() -> tuple[History, dict[str, list[tuple[int, str]]]]:
    history = History(
        [
            op("a", "xy", first=1, expected=0, at=(0, 1)),
            op("a", "z", first=3, expected=2, at=(2, 3)),
            op("a", "w", outcome="failed", expected=1),
            op("a", "v", outcome="unknown", expected=3, at=(4, 5)),
            op("b", "q", outcome="unknown", expected=0),
        ]
    )
    stored = {"a": [(1, "x"), (2, "y"), (3, "z"), (4, "v")]}
    return history, stored


def test_a_history_that_holds_passes() -> None:
    history, stored = clean()
    published = {"a": [(1, "x"), (2, "y"), (2, "y"), (3, "z"), (4, "v")]}
    indexed = {"a": [(4, "v"), (1, "x"), (2, "y"), (3, "z")]}
    assert check(history, stored, published, indexed) == []
    summary = history.summary(0.0, 6.0)
    assert summary["acknowledged"] == 2
    assert summary["longest_without_success_s"] == 3.0  # from 3 s to the end at 6 s


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ({"a": [(1, "x"), (2, "y"), (3, "v")]}, "not stored (lost)"),
        ({"a": [(1, "x"), (2, "y"), (4, "z")]}, "not 1..3"),
        ({"a": [(1, "x"), (2, "y"), (3, "z"), (4, "z")]}, "stored 2 times"),
        ({"a": [(1, "x"), (2, "y"), (3, "z"), (4, "w")]}, "refused"),
        ({"a": [(1, "x"), (2, "y"), (3, "z"), (4, "k")]}, "never appended"),
        ({"a": [(1, "x"), (2, "z"), (3, "y")]}, "acknowledged at version 3, stored at 2"),
        ({"a": [(1, "x"), (2, "y"), (3, "z")], "b": [(1, "q"), (2, "x")]}, "never appended"),
    ],
)
def test_each_kind_of_storage_fault_is_found(
    stored: dict[str, list[tuple[int, str]]], expected: str
) -> None:
    history, _ = clean()
    problems = check(history, stored)
    assert any(expected in p for p in problems), problems


def test_an_unknown_append_stored_in_part_is_found() -> None:
    history = History([op("a", "xy", outcome="unknown", expected=0)])
    assert any("partly" in p for p in check(history, {"a": [(1, "x")]}))


def test_an_acknowledged_exact_append_at_another_version_is_not_linearizable() -> None:
    history = History([op("a", "x", first=2, expected=0), op("a", "y", first=1, expected=None)])
    problems = check(history, {"a": [(1, "y"), (2, "x")]})
    assert any("expecting version 0 acknowledged at 2" in p for p in problems), problems


def test_real_time_order_must_hold() -> None:
    history = History(
        [op("a", "x", first=2, at=(0, 1)), op("a", "y", first=1, at=(2, 3))],
    )
    problems = check(history, {"a": [(1, "y"), (2, "x")]})
    assert any("ended before" in p for p in problems), problems


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([(1, "x"), (2, "y"), (4, "v")], "lacks versions [3]"),
        ([(1, "x"), (3, "z"), (2, "y"), (4, "v")], "not version order"),
        ([(1, "x"), (2, "y"), (2, "k"), (3, "z"), (4, "v")], "two events at version 2"),
        ([(1, "x"), (2, "y"), (3, "z"), (4, "v"), (5, "k")], "unstored [5]"),
    ],
)
def test_kafka_must_hold_every_stored_event_in_order(
    records: list[tuple[int, str]], expected: str
) -> None:
    history, stored = clean()
    problems = check(history, stored, published={"a": records})
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    "documents",
    [
        [(1, "x"), (2, "y"), (3, "z")],
        [(1, "x"), (2, "y"), (3, "z"), (4, "v"), (4, "v")],
    ],
)
def test_opensearch_must_hold_one_document_per_event(documents: list[tuple[int, str]]) -> None:
    history, stored = clean()
    problems = check(history, stored, indexed={"a": documents})
    assert any("OpenSearch holds" in p for p in problems), problems
