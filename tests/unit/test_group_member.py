"""A consumer group member's rules (domain/groups.py), without Kafka: one event out per
aggregate, retries then parking, commit points with the done offsets above them, partitions
moving."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from eventstore.domain.access import Principal
from eventstore.domain.events import RecordedEvent
from eventstore.domain.groups import (
    MAX_DONE_AHEAD,
    Commit,
    Delivery,
    GroupMember,
    GroupRecord,
)
from eventstore.usecases.groups import group_id

P0 = ("events.Order", 0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def record(aggregate: str, version: int, offset: int, where: tuple[str, int] = P0) -> GroupRecord:
    event = RecordedEvent(
        uuid.uuid4(),
        aggregate,
        "Order",
        version,
        "Placed",
        b"{}",
        "application/json",
        {},
        datetime(2026, 1, 1, tzinfo=UTC),
    )
    return GroupRecord(event, where[0], where[1], offset)


def shown(deliveries: list[Delivery]) -> list[tuple[str, int, int]]:
    return [(d.record.event.aggregate_id, d.record.event.version, d.attempt) for d in deliveries]


def member(clock: Clock, **kwargs: object) -> GroupMember:
    m = GroupMember(lambda _: True, clock, **kwargs)  # type: ignore[arg-type]
    m.assign(P0, 0)
    return m


def test_one_event_out_per_aggregate_in_version_order_others_flow() -> None:
    m = member(Clock())
    for offset, (aggregate, version) in enumerate([("a", 1), ("a", 2), ("b", 1), ("a", 3)]):
        m.offer(record(aggregate, version, offset))
    first = m.due()
    assert shown(first) == [("a", 1, 1), ("b", 1, 1)]
    assert m.due() == []  # a's next waits for a:1
    m.ack(first[0].id)
    second = m.due()
    assert shown(second) == [("a", 2, 1)]
    assert m.commits() == {P0: Commit(1, ())}  # a:2 and b:1 are out
    m.ack(first[1].id)
    m.ack(second[0].id)
    assert shown(m.due()) == [("a", 3, 1)]
    assert m.commits() == {P0: Commit(3, ())}


def test_rejected_events_come_back_after_a_growing_backoff_then_are_parked() -> None:
    clock = Clock()
    m = member(clock, max_attempts=3, first_backoff_s=0.5, max_backoff_s=0.8)
    m.offer(record("a", 1, 0))
    m.offer(record("a", 2, 1))
    m.offer(record("b", 1, 2))
    out = m.due()
    m.nack(out[0].id, "boom")
    m.ack(out[1].id)
    assert m.due() == []  # a:1 waits for its retry; a:2 behind it
    clock.now += 0.5
    again = m.due()
    assert shown(again) == [("a", 1, 2)]
    m.nack(again[0].id, "boom")
    clock.now += 0.7
    assert m.due() == []  # 0.8 s this time (capped)
    clock.now += 0.1
    third = m.due()
    assert shown(third) == [("a", 1, 3)]
    m.nack(third[0].id, "still")
    [(parked, reason)] = m.take_to_park()
    assert (parked.record.offset, reason) == (0, "still")
    assert m.due() == []  # not until it is parked
    m.parked(parked)
    assert shown(m.due()) == [("a", 2, 1)]
    assert m.commits()[P0] == Commit(1, (2,))


def test_unacknowledged_deliveries_time_out_as_failures() -> None:
    clock = Clock()
    m = member(clock, ack_timeout_s=30)
    m.offer(record("a", 1, 0))
    (out,) = m.due()
    clock.now += 29
    assert m.expire() == 0
    clock.now += 1
    assert m.expire() == 1
    assert not m.ack(out.id)  # too late: it is being retried
    clock.now += 0.2
    assert shown(m.due()) == [("a", 1, 2)]


def test_the_next_owner_skips_what_was_done_above_the_commit_point() -> None:
    m = member(Clock())
    for offset in range(4):
        m.offer(record(f"x{offset}", 1, offset))
    out = m.due()
    for delivery in out[1:]:
        m.ack(delivery.id)
    commit = m.revoke(P0)
    assert commit == Commit(0, (1, 2, 3))
    assert Commit.done_from(commit.offset, commit.metadata()) == (1, 2, 3)
    assert Commit.done_from(0, "not ours") == ()
    many = Commit(0, tuple(range(1, 5000)))
    assert len(many.metadata()) <= 3000
    assert Commit.done_from(0, many.metadata()) == tuple(
        range(1, 1 + len(Commit.done_from(0, many.metadata())))
    )
    assert Commit.done_from(0, "g1:zz") == ()
    following = GroupMember(lambda _: True, Clock())
    following.assign(P0, commit.offset, commit.done_above)
    for offset in range(5):
        following.offer(record(f"x{offset}", 1, offset))
    assert shown(following.due()) == [("x0", 1, 1), ("x4", 1, 1)]


def test_a_revoked_partition_leaves_nothing_behind() -> None:
    m = member(Clock())
    other = ("events.Order", 1)
    m.assign(other, 0)
    m.offer(record("a", 1, 0))
    m.offer(record("a", 2, 1))
    m.offer(record("b", 1, 0, other))
    out = m.due()
    m.revoke(P0)
    assert not m.ack(out[0].id)  # its partition moved: the next owner delivers it
    m.offer(record("c", 1, 2))  # read before the revocation reached us: not ours
    assert m.due() == []
    assert m.ack(out[1].id)
    assert list(m.commits()) == [other]


def test_filtered_events_move_the_position_and_a_crowded_partition_asks_for_a_pause() -> None:
    m = GroupMember(lambda e: e.aggregate_id != "skip", Clock(), max_in_flight=2)
    m.assign(P0, 10)
    m.offer(record("skip", 1, 10))
    m.offer(record("a", 1, 9))  # before our start: done already
    assert m.commits() == {P0: Commit(11, ())}
    last = 12 + MAX_DONE_AHEAD
    for offset in range(11, last):
        m.offer(record("held" if offset == 11 else f"y{offset}", 1, offset))
    held = m.due()[0]
    assert held.record.event.aggregate_id == "held"
    acked = 0
    while out := [d for d in m.due() if d is not held] or [
        d for d in m._in_flight.values() if d is not held
    ]:
        m.ack(out[0].id)
        acked += 1
    assert acked == MAX_DONE_AHEAD
    assert m.crowded(P0)  # 400 done above an unacknowledged offset: pause reading
    assert m.commits()[P0] == Commit(11, tuple(range(12, last)))
    m.ack(held.id)
    assert not m.crowded(P0)
    assert m.commits()[P0] == Commit(last, ())


def test_groups_of_different_principals_never_share_a_kafka_group() -> None:
    def of(principal: str, group: str) -> str:
        return group_id(Principal(principal, {}), group)

    assert of("a.b", "c") != of("a", "b.c")
    assert of("orders", "g") != of("payments", "g")
    assert of("orders", "g") == of("orders", "g")
