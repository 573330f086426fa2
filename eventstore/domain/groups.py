"""A consumer group member's bookkeeping: which events it may hand out, which were
acknowledged, what to retry or park, and where its partitions may be committed.

Pure state, no I/O (usecases/groups.py drives it with a Kafka consumer of the group). The rules:

* an aggregate has at most one event out at a time (sent and not yet acknowledged, or waiting
  for its retry): its events reach the member in version order, and a failing one holds back
  only its own aggregate, never the others of its partition;
* a nacked (or unacknowledged in time) event is sent again after a growing backoff; after
  `max_attempts` it is parked (the caller writes it to the group's parked topic) and counts
  as done, so its aggregate moves on;
* a partition's commit point is its lowest offset not yet done; the done offsets above it
  travel with the commit (Kafka's commit metadata), so whoever owns the partition next skips
  them: no acknowledged event is handed out again, except one acknowledged after its partition
  was taken away (it was still unacknowledged when it moved);
* what may pile up is bounded: a partition with too many records waiting or done above its
  commit point asks to be paused until it drains.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from eventstore.domain.events import RecordedEvent

#: (topic, partition)
Where = tuple[str, int]

#: A partition with this many records waiting, or this many done offsets above its commit
#: point (they travel in the commit's metadata, which Kafka caps at 4 KiB by default), is paused.
MAX_WAITING_PER_PARTITION = 1000
MAX_DONE_AHEAD = 400
METADATA_VERSION = "g1"
MAX_METADATA_CHARS = 3000


@dataclass(frozen=True, slots=True)
class GroupRecord:
    """An event from one of the group's topics, with where it was."""

    event: RecordedEvent
    topic: str
    partition: int
    offset: int

    @property
    def where(self) -> Where:
        return (self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class ParkedEvent:
    """An event a group gave up on, where it sits among the group's parked events."""

    event: RecordedEvent
    position: int
    #: the last failure: the member's nack reason, or the acknowledgement timeout
    reason: str
    attempts: int
    parked_at: datetime


@dataclass(slots=True)
class Delivery:
    id: int
    record: GroupRecord
    #: 1 for the first time it is sent
    attempt: int
    sent_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Commit:
    """Where a partition may be committed: the next offset to read, and the offsets above it
    that are done already."""

    offset: int
    done_above: tuple[int, ...] = ()

    def metadata(self) -> str:
        """The done offsets as hexadecimal deltas from the commit point: compact, and at most
        MAX_DONE_AHEAD of them (a partition with more is paused)."""
        text = f"{METADATA_VERSION}:"
        for offset in self.done_above:
            delta = format(offset - self.offset, "x")
            if len(text) + len(delta) + 1 > MAX_METADATA_CHARS:
                # Kafka refuses a commit with more (offset.metadata.max.bytes, 4096 by
                # default): the highest done offsets are left out, and would be delivered
                # again if the partition moved now. Pausing keeps this rare.
                break
            text += delta + ","
        return text.rstrip(",")

    @staticmethod
    def done_from(offset: int, metadata: str | None) -> tuple[int, ...]:
        """The done offsets a commit's metadata names; () for anything not ours."""
        if not metadata or not metadata.startswith(f"{METADATA_VERSION}:"):
            return ()
        body = metadata[len(METADATA_VERSION) + 1 :]
        try:
            return tuple(sorted(offset + int(d, 16) for d in body.split(",") if d))
        except ValueError:
            return ()


@dataclass(slots=True)
class _Partition:
    #: the next offset after the highest handed in (at first: where we got the partition)
    high: int
    #: handed in and not done yet
    outstanding: set[int] = field(default_factory=set)
    _lowest: list[int] = field(default_factory=list)
    #: done, above the commit point
    done: set[int] = field(default_factory=set)
    #: done by a previous owner (commit metadata): skipped when they come
    skip: set[int] = field(default_factory=set)
    waiting: int = 0
    changed: bool = True

    def commit_point(self) -> int:
        while self._lowest and self._lowest[0] not in self.outstanding:
            heapq.heappop(self._lowest)
        return self._lowest[0] if self._lowest else self.high

    def take(self, offset: int) -> None:
        self.outstanding.add(offset)
        heapq.heappush(self._lowest, offset)
        self.high = max(self.high, offset + 1)

    def finish(self, offset: int) -> None:
        self.outstanding.discard(offset)
        self.done.add(offset)
        self.high = max(self.high, offset + 1)
        self.changed = True
        point = self.commit_point()
        if len(self.done) > MAX_DONE_AHEAD // 2:
            self.done = {o for o in self.done if o >= point}

    def commit(self) -> Commit:
        point = self.commit_point()
        above = sorted(o for o in self.done if o >= point)
        return Commit(point, tuple(above))


class GroupMember:
    def __init__(
        self,
        wants: Callable[[RecordedEvent], bool],
        clock: Callable[[], float],
        max_in_flight: int = 64,
        max_attempts: int = 5,
        ack_timeout_s: float = 30.0,
        first_backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._wants = wants
        self._clock = clock
        self.max_in_flight = max_in_flight
        self.max_attempts = max_attempts
        self.ack_timeout_s = ack_timeout_s
        self._first_backoff_s = first_backoff_s
        self._max_backoff_s = max_backoff_s
        self._partitions: dict[Where, _Partition] = {}
        #: per aggregate, its records not yet sent, in offset order
        self._queues: dict[str, deque[GroupRecord]] = {}
        #: aggregates with an event out (sent, waiting for a retry, or to be parked)
        self._busy: set[str] = set()
        #: aggregates with a record to send and none out, oldest first
        self._ready: deque[str] = deque()
        self._in_flight: dict[int, Delivery] = {}
        #: (when, tie-break, delivery): nacked events waiting for their next attempt
        self._retries: list[tuple[float, int, Delivery]] = []
        self._to_park: list[tuple[Delivery, str]] = []
        self._ids = itertools.count(1)

    # --- partitions ------------------------------------------------------------------------

    def assign(self, where: Where, offset: int, done_above: Iterable[int] = ()) -> None:
        """The group gave us `where`, to read from `offset`; `done_above`: offsets above it a
        previous owner finished (from the commit's metadata)."""
        part = _Partition(high=offset)
        part.skip = {o for o in done_above if o >= offset}
        self._partitions[where] = part

    def revoke(self, where: Where) -> Commit | None:
        """The group takes `where` away: forget what came from it (what was out will be sent
        by its next owner); where it may be committed."""
        part = self._partitions.pop(where, None)
        if part is None:
            return None
        for aggregate, queue in list(self._queues.items()):
            kept = deque(r for r in queue if r.where != where)
            if kept:
                self._queues[aggregate] = kept
            else:
                del self._queues[aggregate]
        for delivery in [d for d in self._in_flight.values() if d.record.where == where]:
            del self._in_flight[delivery.id]
            self._release(delivery.record.event.aggregate_id)
        kept_retries = [r for r in self._retries if r[2].record.where != where]
        for _, _, delivery in self._retries:
            if delivery.record.where == where:
                self._release(delivery.record.event.aggregate_id)
        self._retries = kept_retries
        heapq.heapify(self._retries)
        for delivery, _ in [p for p in self._to_park if p[0].record.where == where]:
            self._release(delivery.record.event.aggregate_id)
        self._to_park = [p for p in self._to_park if p[0].record.where != where]
        self._ready = deque(a for a in dict.fromkeys(self._ready) if a in self._queues)
        return part.commit()

    def partitions(self) -> list[Where]:
        return list(self._partitions)

    # --- records in --------------------------------------------------------------------------

    def offer(self, record: GroupRecord) -> None:
        """A record read from an assigned partition (in offset order there)."""
        part = self._partitions.get(record.where)
        if part is None or record.offset < part.commit_point():
            return  # revoked meanwhile, or done already (before our start, or read again)
        if record.offset in part.skip:
            part.skip.discard(record.offset)
            part.finish(record.offset)
            return
        if record.offset in part.outstanding or record.offset in part.done:
            return  # read twice (a seek back): already ours
        part.take(record.offset)
        if not self._wants(record.event):
            part.finish(record.offset)  # not for this group's filter: done at once
            return
        aggregate = record.event.aggregate_id
        queue = self._queues.setdefault(aggregate, deque())
        queue.append(record)
        part.waiting += 1
        if aggregate not in self._busy and len(queue) == 1:
            self._ready.append(aggregate)

    # --- deliveries out ----------------------------------------------------------------------

    def due(self) -> list[Delivery]:
        """What to send now: retries whose time came, then new events, up to max_in_flight."""
        now = self._clock()
        out: list[Delivery] = []
        while self._retries and self._retries[0][0] <= now and self._room():
            _, _, previous = heapq.heappop(self._retries)
            out.append(self._send(previous.record, previous.attempt + 1, now))
        while self._ready and self._room():
            aggregate = self._ready.popleft()
            queue = self._queues.get(aggregate)
            if not queue or aggregate in self._busy:
                continue
            record = queue.popleft()
            if not queue:
                del self._queues[aggregate]
            part = self._partitions[record.where]
            part.waiting -= 1
            self._busy.add(aggregate)
            out.append(self._send(record, 1, now))
        return out

    def _room(self) -> bool:
        return len(self._in_flight) < self.max_in_flight

    def _send(self, record: GroupRecord, attempt: int, now: float) -> Delivery:
        delivery = Delivery(next(self._ids), record, attempt, now)
        self._in_flight[delivery.id] = delivery
        return delivery

    def ack(self, delivery_id: int) -> bool:
        """Done with it. False: not out (acknowledged twice, or its partition moved)."""
        delivery = self._in_flight.pop(delivery_id, None)
        if delivery is None:
            return False
        self._finish(delivery)
        return True

    def nack(self, delivery_id: int, reason: str) -> bool:
        """Failed: sent again after a backoff, or parked after max_attempts."""
        delivery = self._in_flight.pop(delivery_id, None)
        if delivery is None:
            return False
        self._failed(delivery, reason)
        return True

    def expire(self) -> int:
        """Count as failed what was not acknowledged within ack_timeout_s; how many."""
        limit = self._clock() - self.ack_timeout_s
        late = [d for d in self._in_flight.values() if d.sent_at <= limit]
        for delivery in late:
            del self._in_flight[delivery.id]
            self._failed(delivery, f"not acknowledged within {self.ack_timeout_s:g} s")
        return len(late)

    def _failed(self, delivery: Delivery, reason: str) -> None:
        if delivery.attempt >= self.max_attempts:
            self._to_park.append((delivery, reason))
            return
        backoff = min(self._first_backoff_s * 2 ** (delivery.attempt - 1), self._max_backoff_s)
        heapq.heappush(self._retries, (self._clock() + backoff, delivery.id, delivery))

    def take_to_park(self) -> list[tuple[Delivery, str]]:
        """Events out of attempts, with the last failure: park each, then call `parked`."""
        out, self._to_park = self._to_park, []
        return out

    def parked(self, delivery: Delivery) -> None:
        """Written to the parked topic: done here."""
        if delivery.record.where in self._partitions:
            self._finish(delivery)
        else:
            self._release(delivery.record.event.aggregate_id)

    def _finish(self, delivery: Delivery) -> None:
        part = self._partitions.get(delivery.record.where)
        if part is not None:
            part.finish(delivery.record.offset)
        self._release(delivery.record.event.aggregate_id)

    def _release(self, aggregate: str) -> None:
        self._busy.discard(aggregate)
        if aggregate in self._queues:
            self._ready.append(aggregate)

    # --- for the driver ---------------------------------------------------------------------

    def commits(self, changed_only: bool = True) -> dict[Where, Commit]:
        """Where each partition may be committed (those that moved since the last call)."""
        out = {}
        for where, part in self._partitions.items():
            if part.changed or not changed_only:
                out[where] = part.commit()
                part.changed = False
        return out

    def crowded(self, where: Where) -> bool:
        """Too much waiting or done above the commit point: pause reading `where`."""
        part = self._partitions.get(where)
        return part is not None and (
            part.waiting >= MAX_WAITING_PER_PARTITION or len(part.done) >= MAX_DONE_AHEAD
        )
