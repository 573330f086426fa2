"""Subscriptions: history, then a caught-up marker, then live events, each with a checkpoint.

* One aggregate: history from Cassandra (by version), then live from the aggregate's Kafka
  partition. The Kafka position is taken *before* the history read, so nothing committed
  after the read can be missed; versions already delivered are skipped and a version that
  arrives ahead of its predecessor (published late) has the gap filled from Cassandra first.
  Checkpoint: the last version delivered.
* Wider filters: the Kafka topics of the wanted aggregate types (all, including types that
  appear later), from the beginning, the end or the checkpoint's offsets. Checkpoint: the
  next offset of every partition. Repeated copies of a version (at-least-once publication)
  are dropped per aggregate.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import replace

from eventstore.domain.access import Operation, PermissionDenied, Principal
from eventstore.domain.errors import EventStoreError, InvalidArgument
from eventstore.domain.events import Direction, RecordedEvent
from eventstore.domain.subscriptions import (
    AggregateCheckpoint,
    LogCheckpoint,
    Start,
    StartAt,
    SubscriptionFilter,
    SubscriptionItem,
    encode_checkpoint,
)
from eventstore.ports import EventLog, EventStorage, LogReader, LogStart

READ_BATCH = 500
#: Memory a wide subscription may spend remembering the last version of the most recently
#: seen aggregates, to drop repeated copies. Repeated copies come from publication retries,
#: close behind the original; a copy of an aggregate forgotten since is delivered again (as
#: at-least-once delivery allows). 8 MiB hold about 50,000 aggregates of 16-byte ids.
DEFAULT_DEDUPE_BYTES = 8 * 1024 * 1024
#: What remembering one aggregate costs besides its id's characters: the str object's header,
#: the int, the OrderedDict's entry and link (tracemalloc, CPython 3.11, 100,000 ASCII ids:
#: 123 bytes per entry plus 49 + length for the str).
_ENTRY_OVERHEAD_BYTES = 176


class RecentVersions:
    """The last version delivered of the most recently seen aggregates, within a byte budget."""

    def __init__(self, budget_bytes: int) -> None:
        self._budget = budget_bytes
        self._used = 0
        self._versions: OrderedDict[str, int] = OrderedDict()

    def is_repeat(self, event: RecordedEvent) -> bool:
        """True for a version at or below one delivered; otherwise remembers this one."""
        key = event.aggregate_id
        known = self._versions.get(key)
        if known is not None and event.version <= known:
            return True
        if known is None:
            self._used += _cost(key)
        self._versions[key] = event.version
        self._versions.move_to_end(key)
        while self._used > self._budget and len(self._versions) > 1:
            forgotten, _ = self._versions.popitem(last=False)
            self._used -= _cost(forgotten)
        return False

    @property
    def used_bytes(self) -> int:
        return self._used

    def __len__(self) -> int:
        return len(self._versions)


def _cost(aggregate_id: str) -> int:
    return len(aggregate_id.encode()) + _ENTRY_OVERHEAD_BYTES


class Subscribe:
    def __init__(
        self,
        storage: EventStorage,
        log: EventLog,
        heartbeat_s: float = 15.0,
        on_lag: Callable[[object, int | None], None] | None = None,
        dedupe_bytes: int = DEFAULT_DEDUPE_BYTES,
    ) -> None:
        self._storage = storage
        self._log = log
        self._heartbeat_s = heartbeat_s
        self._dedupe_bytes = dedupe_bytes
        #: told (about once a second) how far each wide subscription is behind the log's end,
        #: and None when it ends
        self._on_lag = on_lag

    def __call__(
        self,
        subscription: SubscriptionFilter,
        start: Start,
        principal: Principal,
    ) -> AsyncGenerator[SubscriptionItem, None]:
        """The subscription's items. Not a generator itself: a wide filter naming a type the
        principal may not see is refused here, at the call, before anything is opened."""
        if subscription.aggregate_id is not None:
            return self._one_aggregate(subscription, subscription.aggregate_id, start, principal)
        # Only the topics of permitted types are read at all; `matches` checks again.
        permitted = principal.narrow(Operation.SUBSCRIBE, subscription.aggregate_types)
        return self._many(replace(subscription, permitted_types=permitted), start)

    # --- one aggregate -----------------------------------------------------------------

    async def _one_aggregate(
        self,
        subscription: SubscriptionFilter,
        aggregate_id: str,
        start: Start,
        principal: Principal,
    ) -> AsyncGenerator[SubscriptionItem, None]:
        info = await self._storage.describe(aggregate_id)
        named = sorted(subscription.aggregate_types)
        no_type = InvalidArgument.of(
            "aggregate_types",
            f"aggregate {aggregate_id!r} has no events yet: name its type (exactly one)",
        )
        if info is not None:
            aggregate_type = info.aggregate_type
            # To a principal that may not see its type, the answer it would get if the
            # aggregate did not exist; only that the id is taken shows (as an append to it
            # would), never the type.
            if len(named) != 1:
                absent: EventStoreError = no_type
            elif named[0] == aggregate_type:
                absent = PermissionDenied(principal.name, Operation.SUBSCRIBE, aggregate_type)
            else:
                absent = InvalidArgument.of(
                    "aggregate_types", f"aggregate {aggregate_id!r} is not of type {named[0]!r}"
                )
            principal.require_existing(Operation.SUBSCRIBE, aggregate_type, absent)
        elif len(named) == 1:
            aggregate_type = named[0]
        else:
            raise no_type
        principal.require(Operation.SUBSCRIBE, aggregate_type)
        if start.at is StartAt.CHECKPOINT:
            checkpoint = start.checkpoint
            if (
                not isinstance(checkpoint, AggregateCheckpoint)
                or checkpoint.aggregate_id != aggregate_id
            ):
                raise InvalidArgument.of("checkpoint", "belongs to another subscription")
            delivered = checkpoint.version
        elif start.at is StartAt.END:
            delivered = info.version if info else 0
        else:
            delivered = 0  # the beginning, or a time: the history up to it is skipped below
        # Position the live reader first: whatever commits after this is in Kafka after it.
        reader = await self._log.open(frozenset({aggregate_type}), "end", key=aggregate_id)
        try:
            async for event in self._history(aggregate_id, delivered + 1):
                delivered = event.version
                if subscription.matches(event) and start.includes(event):
                    yield self._item(aggregate_id, delivered, event=event)
            yield self._item(aggregate_id, delivered, caught_up=True)
            last_sent = time.monotonic()
            while True:
                records = await reader.read(READ_BATCH)
                for record in records:
                    event = record.event
                    if event.aggregate_id != aggregate_id or event.version <= delivered:
                        continue
                    # Published late (the relay): fill the gap from the store, in order.
                    async for missing in self._history(
                        aggregate_id, delivered + 1, event.version - 1
                    ):
                        delivered = missing.version
                        if subscription.matches(missing) and start.includes(missing):
                            yield self._item(aggregate_id, delivered, event=missing)
                            last_sent = time.monotonic()
                    delivered = event.version
                    if subscription.matches(event) and start.includes(event):
                        yield self._item(aggregate_id, delivered, event=event)
                        last_sent = time.monotonic()
                if time.monotonic() - last_sent >= self._heartbeat_s:
                    yield self._item(aggregate_id, delivered, heartbeat=True)
                    last_sent = time.monotonic()
        finally:
            await reader.close()

    async def _history(
        self, aggregate_id: str, first: int, last: int | None = None
    ) -> AsyncIterator[RecordedEvent]:
        version = first
        while last is None or version <= last:
            limit = READ_BATCH if last is None else min(READ_BATCH, last - version + 1)
            page = await self._storage.read(aggregate_id, version, Direction.FORWARDS, limit)
            for event in page:
                yield event
            if len(page) < limit:
                return
            version = page[-1].version + 1

    @staticmethod
    def _item(
        aggregate_id: str,
        version: int,
        event: RecordedEvent | None = None,
        caught_up: bool = False,
        heartbeat: bool = False,
    ) -> SubscriptionItem:
        token = encode_checkpoint(AggregateCheckpoint(aggregate_id, version))
        return SubscriptionItem(token, event=event, caught_up=caught_up, heartbeat=heartbeat)

    # --- many aggregates ---------------------------------------------------------------

    async def _many(
        self, subscription: SubscriptionFilter, start: Start
    ) -> AsyncGenerator[SubscriptionItem, None]:
        if start.at is StartAt.CHECKPOINT:
            if not isinstance(start.checkpoint, LogCheckpoint):
                raise InvalidArgument.of("checkpoint", "belongs to a single-aggregate subscription")
            where: LogStart = dict(start.checkpoint.positions)
        elif start.at is StartAt.TIME:
            assert start.time is not None  # validation sets it
            where = start.time
        else:
            where = start.at.value
        reader = await self._log.open(
            subscription.aggregate_types or subscription.permitted_types or frozenset(), where
        )
        try:
            async for item in self._follow(subscription, start, reader):
                yield item
        finally:
            await reader.close()

    async def _follow(
        self, subscription: SubscriptionFilter, start: Start, reader: LogReader
    ) -> AsyncIterator[SubscriptionItem]:
        positions = reader.start_positions()
        delivered = RecentVersions(self._dedupe_bytes)
        caught_up = False
        last_sent = time.monotonic()
        next_lag_report = 0.0
        try:
            if reader.caught_up(positions):
                caught_up = True
                yield self._log_item(positions, caught_up=True)
            while True:
                for record in await reader.read(READ_BATCH):
                    positions[(record.aggregate_type, record.partition)] = record.offset + 1
                    event = record.event
                    if delivered.is_repeat(event):
                        continue
                    # From a time, the log is read from the first record of each partition
                    # recorded at or after it; one recorded earlier but published later (the
                    # relay, a replay) is past that point, and is not wanted.
                    if subscription.matches(event) and start.includes(event):
                        yield self._log_item(positions, event=event)
                        last_sent = time.monotonic()
                if self._on_lag is not None and time.monotonic() >= next_lag_report:
                    self._on_lag(reader, reader.lag(positions))
                    next_lag_report = time.monotonic() + 1.0
                if not caught_up and reader.caught_up(positions):
                    caught_up = True
                    yield self._log_item(positions, caught_up=True)
                    last_sent = time.monotonic()
                elif time.monotonic() - last_sent >= self._heartbeat_s:
                    yield self._log_item(positions, heartbeat=True)
                    last_sent = time.monotonic()
        finally:
            if self._on_lag is not None:
                self._on_lag(reader, None)

    @staticmethod
    def _log_item(
        positions: dict[tuple[str, int], int],
        event: RecordedEvent | None = None,
        caught_up: bool = False,
        heartbeat: bool = False,
    ) -> SubscriptionItem:
        token = encode_checkpoint(LogCheckpoint(dict(positions)))
        return SubscriptionItem(token, event=event, caught_up=caught_up, heartbeat=heartbeat)
