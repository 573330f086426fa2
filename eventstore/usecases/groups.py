"""Consumer groups: one member per open SubscribeGroup stream, its deliveries, acknowledgements,
retries and parking (the rules are eventstore.domain.groups'), and the parked events."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, replace

import structlog

from eventstore.domain.access import Operation, Principal
from eventstore.domain.events import RecordedEvent
from eventstore.domain.groups import Commit, GroupMember, ParkedEvent, Where
from eventstore.domain.subscriptions import Start, StartAt, SubscriptionFilter
from eventstore.ports import GroupLog, LogStart

log = structlog.get_logger(__name__)

READ_BATCH = 500
COMMIT_EVERY_S = 1.0


@dataclass(frozen=True, slots=True)
class GroupSettings:
    max_attempts: int = 5
    ack_timeout_s: float = 30.0
    first_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    heartbeat_s: float = 15.0


@dataclass(frozen=True, slots=True)
class GroupItem:
    """One message to a member: a delivery, or a heartbeat."""

    delivery_id: int = 0
    event: RecordedEvent | None = None
    attempt: int = 0
    heartbeat: bool = False


def group_id(principal: Principal, group: str) -> str:
    """The Kafka consumer group: per principal, so no caller can join (or read the parked
    events of) another's group by naming it."""
    # The name's length first: "a.b" + "c" and "a" + "b.c" must not meet in one group.
    return f"eventstore.group.{len(principal.name)}.{principal.name}.{group}"


class _Listener:
    def __init__(self, member: GroupMember) -> None:
        self._member = member

    def assigned(self, where: Where, commit: Commit) -> None:
        log.info("group partition assigned", topic=where[0], partition=where[1], at=commit.offset)
        self._member.assign(where, commit.offset, commit.done_above)

    def revoked(self, where: Where) -> Commit | None:
        log.info("group partition revoked", topic=where[0], partition=where[1])
        return self._member.revoke(where)

    def lost(self, where: Where) -> None:
        log.warning("group partition lost", topic=where[0], partition=where[1])
        self._member.revoke(where)


class Membership:
    """One member: `items()` is what it is sent; `ack`/`nack` what it answered."""

    def __init__(
        self,
        log_: GroupLog,
        kafka_group: str,
        subscription: SubscriptionFilter,
        start: Start,
        settings: GroupSettings,
        max_in_flight: int,
        clock: Callable[[], float],
        on_parked: Callable[[], None] = lambda: None,
    ) -> None:
        self._log = log_
        self._group = kafka_group
        self._on_parked = on_parked
        self._subscription = subscription
        self._start = start
        self._settings = settings
        self._clock = clock
        self._failure: Exception | None = None
        #: leaving: the consumer's close runs in a thread and its revoke callback reads the
        #: member's state there, so answers arriving meanwhile are no longer applied
        self._leaving = False
        self.member = GroupMember(
            lambda event: subscription.matches(event) and start.includes(event),
            clock,
            max_in_flight=max_in_flight,
            max_attempts=settings.max_attempts,
            ack_timeout_s=settings.ack_timeout_s,
            first_backoff_s=settings.first_backoff_s,
            max_backoff_s=settings.max_backoff_s,
        )

    def fail(self, error: Exception) -> None:
        """End the membership with `error` (the member sent something wrong)."""
        self._failure = error

    def ack(self, delivery_ids: Sequence[int]) -> int:
        """How many were out (an unknown id, e.g. of a partition that moved, is ignored)."""
        if self._leaving:
            return 0
        return sum(self.member.ack(i) for i in delivery_ids)

    def nack(self, delivery_ids: Sequence[int], reason: str) -> int:
        if self._leaving:
            return 0
        return sum(self.member.nack(i, reason or "rejected by the member") for i in delivery_ids)

    async def items(self) -> AsyncGenerator[GroupItem, None]:
        types = self._subscription.aggregate_types or self._subscription.permitted_types
        where: LogStart = "beginning"
        if self._start.at is StartAt.END:
            where = "end"
        elif self._start.at is StartAt.TIME and self._start.time is not None:
            where = self._start.time
        consumer = await self._log.join(
            self._group, types or frozenset(), where, _Listener(self.member)
        )
        paused: set[Where] = set()
        last_commit = last_sent = self._clock()
        try:
            while True:
                if self._failure is not None:
                    raise self._failure
                for record in await consumer.read(READ_BATCH):
                    self.member.offer(record)
                self.member.expire()
                for delivery, reason in self.member.take_to_park():
                    await self._log.park(self._group, delivery.record, reason, delivery.attempt)
                    log.warning(
                        "event parked",
                        aggregate_id=delivery.record.event.aggregate_id,
                        version=delivery.record.event.version,
                        attempts=delivery.attempt,
                        reason=reason,
                    )
                    self.member.parked(delivery)
                    self._on_parked()
                for delivery in self.member.due():
                    yield GroupItem(delivery.id, delivery.record.event, delivery.attempt)
                    last_sent = self._clock()
                crowded = {w for w in self.member.partitions() if self.member.crowded(w)}
                consumer.pause(sorted(crowded - paused))
                consumer.resume(sorted(paused - crowded))
                paused = crowded
                now = self._clock()
                if now - last_commit >= COMMIT_EVERY_S:
                    consumer.commit(self.member.commits())
                    last_commit = now
                if now - last_sent >= self._settings.heartbeat_s:
                    yield GroupItem(heartbeat=True)
                    last_sent = now
        finally:
            # What is out now goes to the next owner of its partition (not done: not skipped).
            self._leaving = True
            await consumer.close(self.member.commits(changed_only=False))


class ConsumeGroup:
    def __init__(
        self,
        log_: GroupLog,
        settings: GroupSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_parked: Callable[[], None] = lambda: None,
    ) -> None:
        self._log = log_
        self._settings = settings or GroupSettings()
        self._clock = clock
        #: told of each event parked (the server counts them for its metrics)
        self._on_parked = on_parked

    def join(
        self,
        group: str,
        subscription: SubscriptionFilter,
        start: Start,
        principal: Principal,
        max_in_flight: int,
    ) -> Membership:
        """A member, once the principal may subscribe to what it asks for (PermissionDenied
        here, before anything is opened)."""
        permitted = principal.narrow(Operation.SUBSCRIBE, subscription.aggregate_types)
        return Membership(
            self._log,
            group_id(principal, group),
            replace(subscription, permitted_types=permitted),
            start,
            self._settings,
            max_in_flight,
            self._clock,
            self._on_parked,
        )

    async def parked(self, group: str, principal: Principal, max_count: int) -> list[ParkedEvent]:
        return await self._log.parked(group_id(principal, group), max_count)

    async def replay_parked(self, group: str, principal: Principal, skip: bool) -> int:
        return await self._log.replay_parked(group_id(principal, group), skip)
