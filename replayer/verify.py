"""Reconciliation: compare Cassandra (the source of truth) with Kafka and the search index for
one aggregate type, and optionally republish to Kafka what it lacks.

    report = await verify(cassandra_settings, kafka_settings, opensearch_settings, "Order")
    assert report.ok, report.missing_from_kafka()

How it works, in this order:

1. The topic's end offsets are noted (records published later are not read).
2. The catalog gives the aggregates (the type's days, or the days asked for); their events
   are read from Cassandra in pages, keeping per aggregate the stored event ids (16 bytes each)
   and the versions in scope as ranges.
3. The whole topic (from its beginning) and the index documents of the type are read at the
   same time, each copy compared with the stored event at its version as it arrives.
4. Without a day range or an aggregate id, aggregates that the topic or the index hold but the
   catalog does not list are looked up in Cassandra too (reported as uncataloged).

Events recorded at or after the run's start (`as_of`) are not compared: they may still be on
their way. Nothing here chooses an exit code or prints; `replayer.main` does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import TypeVar

from cassandra import DriverException, InvalidRequest, OperationTimedOut
from cassandra.cluster import NoHostAvailable

from eventstore.config import CassandraSettings, KafkaSettings, OpenSearchSettings
from eventstore.domain.errors import StorageUnavailable
from eventstore.domain.events import Direction, RecordedEvent
from eventstore.domain.validation import Limits
from eventstore.ports import AggregateCatalog, Delivery, EventPublisher, EventStorage, PublishFailed
from eventstore.publishing.kafka import KafkaEventPublisher
from eventstore.storage.cassandra import CassandraEventStorage
from eventstore.storage.catalog import CassandraAggregateCatalog
from eventstore.storage.connection import CassandraConnection
from replayer.comparison import (
    AggregateFindings,
    EventRef,
    IndexFindings,
    KafkaFindings,
    Report,
    Stored,
    Tally,
    Versions,
    Window,
    index_findings,
    kafka_findings,
    late_versions,
)
from replayer.scans import CopyScan, IndexScan, TopicScan, micros

__all__ = [
    "AggregateFindings",
    "EventRef",
    "IndexFindings",
    "KafkaFindings",
    "Report",
    "VerifyError",
    "reconcile",
    "setup_errors",
    "verify",
]

T = TypeVar("T")
R = TypeVar("R")

#: Events per Cassandra read, and aggregates read at once.
PAGE = 500
CONCURRENCY = 16
#: Attempts of each Cassandra read before the backend counts as unavailable.
ATTEMPTS = 4


class VerifyError(Exception):
    """The reconciliation cannot run as asked (contradictory arguments, an aggregate of
    another type)."""


async def verify(
    cassandra: CassandraSettings | CassandraConnection,
    kafka: KafkaSettings,
    opensearch: OpenSearchSettings,
    aggregate_type: str,
    *,
    aggregate_id: str | None = None,
    aggregate_ids: Collection[str] | None = None,
    since_day: date | None = None,
    until_day: date | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    check_kafka: bool = True,
    check_index: bool = True,
    republish: bool = False,
    limits: Limits | None = None,
    as_of: datetime | None = None,
) -> Report:
    """Compare the stored events of `aggregate_type` with its topic and the index.

    Scope: one aggregate (`aggregate_id`), the aggregates named (`aggregate_ids`: a test's
    oracle need not trust the catalog), or the aggregates the catalog lists for the days
    since_day .. until_day (default: the type's first day to tomorrow, UTC); only events
    recorded in [start, end) and before `as_of` (default: now). `republish` sends what the
    topic lacks, in version order per aggregate, and waits for Kafka to confirm it (records
    sized for `limits`, the server's; default: the default limits).

    A connection passed in stays open; settings get a connection of their own. Raises
    VerifyError for arguments that cannot be honoured and StorageUnavailable when a backend
    does not answer.
    """
    moment = datetime.now(UTC) if as_of is None else _utc(as_of)
    start = _utc(start) if start is not None else None
    end = _utc(end) if end is not None else None
    _check(aggregate_type, since_day, until_day, start, end, check_kafka, republish)
    chosen = _chosen(aggregate_id, aggregate_ids, since_day, until_day)
    topic = TopicScan(kafka, kafka.topic(aggregate_type), chosen) if check_kafka else None
    index_end = min(end, moment) if end is not None else moment
    index = IndexScan(opensearch, aggregate_type, chosen, start, index_end) if check_index else None
    owned = not isinstance(cassandra, CassandraConnection)
    connection = (
        await CassandraConnection.open(cassandra)
        if isinstance(cassandra, CassandraSettings)
        else cassandra
    )
    publisher: KafkaEventPublisher | None = None
    try:
        storage, catalog = await _adapters(connection)
        publisher = KafkaEventPublisher(kafka, limits or Limits()) if republish else None
        return await reconcile(
            storage,
            catalog,
            aggregate_type,
            topic=topic,
            index=index,
            publisher=publisher,
            aggregate_ids=chosen,
            since_day=since_day,
            until_day=until_day,
            start=start,
            end=end,
            as_of=moment,
        )
    finally:
        if publisher is not None:
            await publisher.close()
        if owned:
            await connection.close()


@contextmanager
def setup_errors(keyspace: str) -> Iterator[None]:
    """Translate the driver errors that Cassandra adapters' constructors let through (they
    prepare statements)."""
    try:
        yield
    except InvalidRequest as exc:
        # Typically a keyspace or table that does not exist: configuration, not an outage.
        raise VerifyError(
            f"Cassandra keyspace {keyspace!r} is not usable (is EVENTSTORE_CASSANDRA_KEYSPACE "
            f"right, and has eventstore-migrate run?): {exc}"
        ) from exc
    except (DriverException, OperationTimedOut, NoHostAvailable) as exc:
        raise StorageUnavailable(f"Cassandra: {type(exc).__name__}: {exc}") from exc


async def _adapters(
    connection: CassandraConnection,
) -> tuple[CassandraEventStorage, CassandraAggregateCatalog]:
    with setup_errors(connection.settings.keyspace):
        storage = await asyncio.to_thread(CassandraEventStorage, connection)
        catalog = await CassandraAggregateCatalog.create(connection)
    return storage, catalog


def _utc(value: datetime) -> datetime:
    """Naive times are UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _chosen(
    aggregate_id: str | None,
    aggregate_ids: Collection[str] | None,
    since_day: date | None,
    until_day: date | None,
) -> list[str] | None:
    """The aggregates named, if any (then the catalog is not walked)."""
    if aggregate_id is not None and aggregate_ids is not None:
        raise VerifyError("name one aggregate or several, not both")
    named = [aggregate_id] if aggregate_id is not None else aggregate_ids
    if named is None:
        return None
    if isinstance(named, str):
        raise VerifyError("aggregate_ids is a collection of ids, not one id")
    if since_day or until_day:
        raise VerifyError("days pick aggregates from the catalog: not with named aggregates")
    if not all(named):
        raise VerifyError("an aggregate id is empty")
    return sorted(set(named))


def _check(
    aggregate_type: str,
    since_day: date | None,
    until_day: date | None,
    start: datetime | None,
    end: datetime | None,
    check_kafka: bool,
    republish: bool,
) -> None:
    if not aggregate_type:
        raise VerifyError("an aggregate type is required")
    if since_day and until_day and since_day > until_day:
        raise VerifyError(f"since day {since_day} is after until day {until_day}")
    if start and end and start >= end:
        raise VerifyError(f"start {start.isoformat()} is not before end {end.isoformat()}")
    if republish and not check_kafka:
        raise VerifyError("republishing needs the Kafka check")


async def reconcile(
    storage: EventStorage,
    catalog: AggregateCatalog,
    aggregate_type: str,
    *,
    topic: CopyScan | None,
    index: CopyScan | None,
    publisher: EventPublisher | None = None,
    aggregate_ids: Sequence[str] | None = None,
    since_day: date | None = None,
    until_day: date | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    as_of: datetime,
) -> Report:
    """verify() over ports: the store, the catalog and the two copies (None: not checked).
    `aggregate_ids` replaces the catalog walk. With a publisher, what the topic lacks is sent
    to it."""
    window = Window(micros(start) if start else None, micros(end) if end else None, micros(as_of))
    notes: list[str] = []
    timings: dict[str, float] = {}
    began = time.monotonic()
    scans = [scan for scan in (topic, index) if scan is not None]
    try:
        for scan in scans:
            # Before the store is read: a record published later is not read, so an event
            # committed later cannot look missing (it is recent, and left out).
            await asyncio.to_thread(scan.open)
        if topic is not None and not topic.exists:
            notes.append(f"topic {topic.name} does not exist")
        timings["open"] = time.monotonic() - began
        discover = aggregate_ids is None and since_day is None and until_day is None
        if aggregate_ids is not None:
            ids = list(aggregate_ids)
        else:
            ids = await _cataloged(catalog, aggregate_type, since_day, until_day, end, notes)
        timings["catalog"] = time.monotonic() - began - timings["open"]
        stored = await _read_all(storage, ids, window)
        timings["cassandra"] = time.monotonic() - began - timings["open"] - timings["catalog"]
        for found in list(stored.values()):
            if found.aggregate_type not in (None, aggregate_type):
                if aggregate_ids is not None:
                    raise VerifyError(
                        f"aggregate {found.aggregate_id!r} is of type "
                        f"{found.aggregate_type!r}, not {aggregate_type!r}"
                    )
                notes.append(
                    f"the catalog lists {found.aggregate_id!r} under {aggregate_type!r} but it "
                    f"is of type {found.aggregate_type!r}: not compared"
                )
                del stored[found.aggregate_id]
        for named in aggregate_ids or ():
            if stored[named].head == 0:
                notes.append(f"aggregate {named!r} has no events")

        kafka_tallies: dict[str, Tally] = {}
        index_tallies: dict[str, Tally] = {}

        def collector(tallies: dict[str, Tally], keep_repeated: bool) -> _Visit:
            def visit(
                copy_of: str, version: int, event_id: bytes, recorded_at: int, partition: int
            ) -> None:
                known = stored.get(copy_of)
                if known is None and not discover:
                    return  # outside the days asked for
                tally = tallies.get(copy_of)
                if tally is None:
                    tally = tallies[copy_of] = Tally()
                in_range = window.contains(recorded_at)
                if known is None:
                    tally.defer(version, event_id, in_range, partition)
                else:
                    tally.observe(known, version, event_id, in_range, partition, keep_repeated)

            return visit

        async def timed(label: str, scan: CopyScan, visit: _Visit) -> int:
            started = time.monotonic()
            count = await asyncio.to_thread(scan.scan, visit)
            timings[label] = time.monotonic() - started
            return count

        reads: list[Awaitable[int]] = []
        if topic is not None:
            reads.append(timed("kafka", topic, collector(kafka_tallies, False)))
        if index is not None:
            reads.append(timed("index", index, collector(index_tallies, True)))
        # Both threads run to their end before anything is closed, even if one fails.
        outcomes = await asyncio.gather(*reads, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        counts = [int(c) for c in outcomes if not isinstance(c, BaseException)]
        records = counts[0] if topic is not None else 0
        documents = counts[-1] if index is not None else 0

        uncataloged = await _discover(
            storage, aggregate_type, stored, kafka_tallies, index_tallies, window
        )
        findings = _findings(stored, kafka_tallies, index_tallies, topic, index)
        if publisher is not None:
            started = time.monotonic()
            findings = await _republish(storage, publisher, findings, kafka_tallies, notes)
            timings["republish"] = time.monotonic() - started
        timings["total"] = time.monotonic() - began
        in_scope = [s for s in stored.values() if s.head]
        return Report(
            aggregate_type=aggregate_type,
            as_of=as_of,
            topic=topic.name if topic is not None else None,
            index=index.name if index is not None else None,
            aggregates=len(in_scope),
            events=sum(len(s.scope) for s in in_scope),
            recent=sum(s.recent for s in in_scope),
            records=records,
            documents=documents,
            undecodable=sum(scan.undecodable for scan in scans),
            findings=tuple(findings),
            uncataloged=tuple(sorted(uncataloged)),
            notes=tuple(notes),
            timings={k: round(v, 3) for k, v in timings.items()},
        )
    finally:
        for scan in scans:
            await asyncio.to_thread(scan.close)


_Visit = Callable[[str, int, bytes, int, int], None]


async def _cataloged(
    catalog: AggregateCatalog,
    aggregate_type: str,
    since_day: date | None,
    until_day: date | None,
    end: datetime | None,
    notes: list[str],
) -> list[str]:
    """The aggregates the catalog lists for the type on the days asked for."""
    first = (await _patiently(catalog.types)).get(aggregate_type)
    if first is None:
        notes.append(f"the catalog has no aggregate type {aggregate_type!r}")
        return []
    low = max(first, since_day) if since_day else first
    # Tomorrow too: a server whose clock runs ahead may have filed an aggregate there.
    high = until_day or datetime.now(UTC).date() + timedelta(days=1)
    if end is not None:
        # An aggregate created after `end` has no event before it.
        high = min(high, end.astimezone(UTC).date())
    days = [low + timedelta(days=n) for n in range((high - low).days + 1)]
    ids: set[str] = set()

    async def day(on: date) -> None:
        ids.update(await _patiently(partial(catalog.aggregates, aggregate_type, on)))

    await _each(days, day)
    return sorted(ids)


async def _read_all(storage: EventStorage, ids: Iterable[str], window: Window) -> dict[str, Stored]:
    stored: dict[str, Stored] = {}

    async def one(aggregate_id: str) -> None:
        stored[aggregate_id] = await _read_stored(storage, aggregate_id, window)

    await _each(ids, one)
    return stored


async def _read_stored(storage: EventStorage, aggregate_id: str, window: Window) -> Stored:
    stored = Stored(aggregate_id)
    version = 1
    while True:
        events = await _patiently(
            partial(storage.read, aggregate_id, version, Direction.FORWARDS, PAGE)
        )
        for event in events:
            at = micros(event.recorded_at)
            stored.aggregate_type = event.aggregate_type
            stored.add(event.version, event.event_id, window.contains(at), window.recent(at))
        if len(events) < PAGE:
            return stored
        version = events[-1].version + 1


async def _patiently(call: Callable[[], Awaitable[R]]) -> R:
    """A read, asked again when it fails: reads are idempotent, and one slow answer from a
    loaded cluster should not end a long reconciliation. Persistent failures still raise."""
    for attempt in range(ATTEMPTS - 1):
        try:
            return await call()
        except StorageUnavailable:
            await asyncio.sleep(0.5 * 2**attempt)
    return await call()


async def _each(items: Iterable[T], work: Callable[[T], Awaitable[None]]) -> None:
    """Run `work` on every item, CONCURRENCY at a time."""
    pending = iter(items)

    async def worker() -> None:
        for item in pending:
            await work(item)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def _discover(
    storage: EventStorage,
    aggregate_type: str,
    stored: dict[str, Stored],
    kafka_tallies: dict[str, Tally],
    index_tallies: dict[str, Tally],
    window: Window,
) -> list[str]:
    """Look up the aggregates the copies hold but the catalog did not list; compare their
    copies now. Returns those that the store has (uncataloged)."""
    unknown = sorted(
        {a for a, t in kafka_tallies.items() if t.pending}
        | {a for a, t in index_tallies.items() if t.pending}
    )
    if not unknown:
        return []
    found = await _read_all(storage, unknown, window)
    uncataloged = []
    for aggregate_id in unknown:
        candidate = found[aggregate_id]
        known: Stored | None = None
        if candidate.head and candidate.aggregate_type == aggregate_type:
            known = stored[aggregate_id] = candidate
            uncataloged.append(aggregate_id)
        if aggregate_id in kafka_tallies:
            kafka_tallies[aggregate_id].resolve(known)
        if aggregate_id in index_tallies:
            index_tallies[aggregate_id].resolve(known, keep_repeated=True)
    return uncataloged


def _findings(
    stored: dict[str, Stored],
    kafka_tallies: dict[str, Tally],
    index_tallies: dict[str, Tally],
    topic: CopyScan | None,
    index: CopyScan | None,
) -> list[AggregateFindings]:
    findings = []
    for aggregate_id in sorted(stored.keys() | kafka_tallies.keys() | index_tallies.keys()):
        known = stored.get(aggregate_id) or Stored(aggregate_id)
        outcome = AggregateFindings(
            aggregate_id,
            len(known.scope),
            kafka=(
                kafka_findings(known, kafka_tallies.get(aggregate_id) or Tally())
                if topic is not None
                else KafkaFindings()
            ),
            index=(
                index_findings(known, index_tallies.get(aggregate_id) or Tally())
                if index is not None
                else IndexFindings()
            ),
        )
        if outcome.noteworthy:
            findings.append(outcome)
    return findings


async def _republish(
    storage: EventStorage,
    publisher: EventPublisher,
    findings: list[AggregateFindings],
    tallies: dict[str, Tally],
    notes: list[str],
) -> list[AggregateFindings]:
    """Send each aggregate's missing events in version order; wait for Kafka to confirm."""
    sent: list[tuple[int, Delivery]] = []

    async def send(position: int) -> None:
        # One send per aggregate, its versions ascending: they reach the partition in order.
        outcome = findings[position]
        events = await _events(storage, outcome.aggregate_id, outcome.kafka.missing)
        try:
            sent.append((position, await publisher.send(events)))
        except PublishFailed as exc:
            notes.append(f"republishing {outcome.aggregate_id!r} failed: {exc}")

    await _each((p for p, f in enumerate(findings) if f.kafka.missing), send)
    updated = list(findings)
    for position, delivery in sorted(sent, key=lambda s: s[0]):
        outcome = findings[position]
        try:
            await delivery.wait()
        except PublishFailed as exc:
            notes.append(f"republishing {outcome.aggregate_id!r} failed: {exc}")
            continue
        tally = tallies.get(outcome.aggregate_id) or Tally()
        kafka = replace(
            outcome.kafka,
            republished=len(outcome.kafka.missing),
            late=late_versions(outcome.kafka, tally),
        )
        updated[position] = replace(outcome, kafka=kafka)
    return updated


async def _events(
    storage: EventStorage, aggregate_id: str, wanted: tuple[EventRef, ...]
) -> list[RecordedEvent]:
    """The stored events of `wanted` (ascending versions), read in pages."""
    versions = Versions()
    for ref in wanted:
        versions.add(ref.version)
    found: list[RecordedEvent] = []
    for first, last in versions.ranges():
        version = first
        while version <= last:
            size = min(PAGE, last - version + 1)
            page = await _patiently(
                partial(storage.read, aggregate_id, version, Direction.FORWARDS, size)
            )
            if not page:
                break
            found.extend(e for e in page if e.version <= last)
            version = page[-1].version + 1
    return found
