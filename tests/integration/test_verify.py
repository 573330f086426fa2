"""eventstore-replay verify against the real services: events stored in Cassandra (and in the
catalog), some published to Kafka, some indexed; the report names exactly what differs, and
republishing mends the Kafka side."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from eventstore.config import CassandraSettings, KafkaSettings, OpenSearchSettings
from eventstore.domain.events import Direction, NewEvent, RecordedEvent
from eventstore.domain.validation import Limits
from eventstore.ports import Committed
from eventstore.publishing.kafka import KafkaEventPublisher
from eventstore.search.documents import document_id, index_name, to_document
from eventstore.search.setup import ensure_template, make_client
from eventstore.storage.cassandra import CassandraEventStorage
from eventstore.storage.catalog import CassandraAggregateCatalog
from replayer.verify import Report, VerifyError, verify

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TYPE = "Order"


class World:
    """The three backends, written to directly."""

    def __init__(
        self,
        storage: CassandraEventStorage,
        catalog: CassandraAggregateCatalog,
        publisher: KafkaEventPublisher,
        cassandra: CassandraSettings,
        kafka: KafkaSettings,
        opensearch: OpenSearchSettings,
    ) -> None:
        self.storage = storage
        self.catalog = catalog
        self.publisher = publisher
        self.cassandra = cassandra
        self.kafka = kafka
        self.opensearch = opensearch
        #: The type is registered once per World, as the server does once per process: 300
        #: stores registering it at once were 300 Paxos rounds on one partition, and one
        #: timed out (WriteTimeout, SERIAL) in a fresh-clone CI run.
        self._registering = asyncio.Lock()
        self._registered = False

    async def store(
        self, aggregate_id: str, count: int, cataloged: bool = True, per_append: int = 50
    ) -> list[RecordedEvent]:
        """Append `count` events (filing the aggregate in the catalog first, as the server
        will) and return them as stored."""
        at = datetime.now(UTC)
        if cataloged:
            async with self._registering:
                if not self._registered:
                    assert await self.catalog.register_type(TYPE, at) is None
                    self._registered = True
            await self.catalog.add([(TYPE, aggregate_id)], at)
        written = 0
        while written < count:
            batch = [
                NewEvent(uuid.uuid4(), "Placed", json.dumps({"n": i}).encode(), "application/json")
                for i in range(written, min(count, written + per_append))
            ]
            outcome = await self.storage.append(aggregate_id, TYPE, written, batch, at)
            assert isinstance(outcome, Committed), outcome
            written += len(batch)
        events: list[RecordedEvent] = []
        while len(events) < count:
            events += await self.storage.read(
                aggregate_id, len(events) + 1, Direction.FORWARDS, 500
            )
        return events

    async def publish(self, events: Sequence[RecordedEvent], *versions: int) -> None:
        """Send these versions of one aggregate, in the order given."""
        chosen = (
            [next(e for e in events if e.version == v) for v in versions] if versions else events
        )
        for event in chosen:
            await (await self.publisher.send([event])).wait()

    async def publish_all(self, events: Sequence[RecordedEvent]) -> None:
        await (await self.publisher.send(events)).wait()

    def index(self, events: Sequence[RecordedEvent], into: str | None = None) -> None:
        """Index documents as the indexer does (into `into` instead of the event's month)."""
        client = make_client(self.opensearch)
        try:
            ensure_template(client, self.opensearch)
            body: list[dict[str, object]] = []
            for event in events:
                target = into or index_name(self.opensearch, event.recorded_at)
                _id = document_id(event.aggregate_id, event.version)
                body.append({"index": {"_index": target, "_id": _id}})
                body.append(to_document(event))
            response = client.bulk(body=body, refresh="true")
            assert not response["errors"], response
        finally:
            client.close()

    async def verify(self, **options: object) -> Report:
        return await verify(
            self.storage.connection,
            self.kafka,
            self.opensearch,
            TYPE,
            **options,  # type: ignore[arg-type]
        )


@pytest.fixture
async def world(
    cassandra_storage: CassandraEventStorage,
    cassandra_settings: CassandraSettings,
    kafka_settings: KafkaSettings,
    opensearch_settings: OpenSearchSettings,
) -> AsyncIterator[World]:
    catalog = await CassandraAggregateCatalog.create(cassandra_storage.connection)
    publisher = KafkaEventPublisher(kafka_settings, Limits())
    yield World(
        cassandra_storage,
        catalog,
        publisher,
        cassandra_settings,
        kafka_settings,
        opensearch_settings,
    )
    await publisher.close()


async def test_verify_names_exactly_what_differs_and_republish_mends_kafka(world: World) -> None:
    clean = await world.store("clean", 5)
    await world.publish_all(clean)
    world.index(clean)

    tail = await world.store("tail", 4)  # Kafka lacks 3 and 4; the index has 2 twice
    await world.publish(tail, 1, 2)
    world.index(tail)
    world.index([tail[1]], into=f"{world.opensearch.index_prefix}-2000.01")

    shuffled = await world.store("shuffled", 3)  # Kafka: 1, 3, 2, 1; index lacks 3
    await world.publish(shuffled, 1, 3, 2, 1)
    world.index(shuffled[:2])

    gap = await world.store("gap", 3)  # Kafka lacks 2, behind 3: republishing it is late
    await world.publish(gap, 1, 3)
    world.index(gap)

    loose = await world.store("loose", 2, cataloged=False)  # in the copies, not the catalog
    await world.publish_all(loose)
    world.index(loose)

    ghost = RecordedEvent(
        event_id=uuid.uuid4(),
        aggregate_id="ghost",
        aggregate_type=TYPE,
        version=1,
        event_type="Placed",
        data=b"{}",
        content_type="application/json",
        metadata={},
        recorded_at=datetime.now(UTC),
    )
    await world.publish_all([ghost])
    world.index([ghost])

    report = await world.verify()
    assert not report.ok
    assert report.aggregates == 5
    assert report.events == 17
    assert report.uncataloged == ("loose",)
    assert report.missing_from_kafka() == {"tail": [3, 4], "gap": [2]}
    assert report.missing_from_index() == {"shuffled": [3]}
    found = report.by_aggregate()
    assert set(found) == {"tail", "shuffled", "gap", "ghost"}
    assert [r.event_id for r in found["tail"].kafka.missing] == [e.event_id for e in tail[2:]]
    assert found["tail"].index.repeated == ((2, 2),)
    assert found["shuffled"].kafka.out_of_order == (2,)
    assert found["shuffled"].kafka.repeats == 1
    assert found["gap"].kafka.out_of_order == ()
    assert [(r.version, r.event_id) for r in found["ghost"].kafka.extra] == [(1, ghost.event_id)]
    assert [(r.version, r.event_id) for r in found["ghost"].index.extra] == [(1, ghost.event_id)]
    assert report.records == 5 + 2 + 4 + 2 + 2 + 1
    assert report.documents == 5 + 5 + 2 + 3 + 2 + 1

    # Kafka only: the index findings disappear, the Kafka ones stay.
    kafka_only = await world.verify(check_index=False)
    assert kafka_only.index is None
    assert kafka_only.missing_from_index() == {}
    assert kafka_only.missing_from_kafka() == report.missing_from_kafka()

    mended = await world.verify(republish=True, check_index=False)
    assert mended.republished == 3
    assert mended.by_aggregate()["tail"].kafka.ok
    assert mended.by_aggregate()["gap"].kafka.late == (2,)

    again = await world.verify(check_index=False)
    assert again.missing_from_kafka() == {}
    problems = {f.aggregate_id for f in again.findings if not f.ok}
    assert problems == {"shuffled", "gap", "ghost"}, again.to_dict()
    assert again.by_aggregate()["gap"].kafka.out_of_order == (2,), "republished after 3"


async def test_verify_scope_one_aggregate_and_time_range(world: World) -> None:
    early = await world.store("early", 3)
    await world.publish(early, 1)
    await asyncio.sleep(0.05)
    cut = datetime.now(UTC)
    await asyncio.sleep(0.05)
    late = await world.store("late", 2)
    one = await world.verify(aggregate_id="late", check_index=False)
    assert one.aggregates == 1
    assert one.missing_from_kafka() == {"late": [1, 2]}
    assert one.notes == ()
    before = await world.verify(end=cut, check_index=False)
    assert before.missing_from_kafka() == {"early": [2, 3]}
    after = await world.verify(start=cut, check_index=False)
    assert after.missing_from_kafka() == {"late": [1, 2]}
    days = await world.verify(since_day=datetime.now(UTC).date() + timedelta(days=2))
    assert days.aggregates == 0
    assert late[0].recorded_at >= cut
    # Named aggregates need no catalog: an oracle may not trust it.
    hidden = await world.store("hidden", 2, cataloged=False)
    await world.publish_all(hidden)
    named = await world.verify(aggregate_ids=["hidden", "early", "nobody"], check_index=False)
    assert named.aggregates == 2
    assert named.missing_from_kafka() == {"early": [2, 3]}
    assert named.notes == ("aggregate 'nobody' has no events",)
    with pytest.raises(VerifyError):
        await world.verify(aggregate_id="late", aggregate_ids=["late"])


async def test_verify_tens_of_thousands_of_events(world: World) -> None:
    aggregates, per_aggregate = 300, 100
    started = time.monotonic()
    stored: list[list[RecordedEvent]] = await asyncio.gather(
        *(world.store(f"big-{n}", per_aggregate) for n in range(aggregates))
    )
    for events in stored:
        await world.publisher.send(events)
    await (await world.publisher.send(stored[-1][-1:])).wait()  # one repeat, and all flushed
    everything = [e for events in stored for e in events]
    for at in range(0, len(everything), 5000):
        world.index(everything[at : at + 5000])
    setup_s = time.monotonic() - started

    started = time.monotonic()
    report = await world.verify()
    took = time.monotonic() - started
    print(
        f"\nverify of {report.events} events in {report.aggregates} aggregates "
        f"({report.records} records, {report.documents} documents) took {took:.1f} s "
        f"(steps: {dict(report.timings)}; setting up took {setup_s:.1f} s)"
    )
    assert report.ok, report.to_dict()
    assert report.events == aggregates * per_aggregate
    assert report.by_aggregate()[f"big-{aggregates - 1}"].kafka.repeats == 1
    assert took < 60


# --- the command ---------------------------------------------------------------------------


async def cli(world: World, *args: str) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "EVENTSTORE_CASSANDRA_HOSTS": world.cassandra.hosts,
        "EVENTSTORE_CASSANDRA_KEYSPACE": world.cassandra.keyspace,
        "EVENTSTORE_KAFKA_BOOTSTRAP": world.kafka.bootstrap,
        "EVENTSTORE_KAFKA_TOPIC_PREFIX": world.kafka.topic_prefix,
        "EVENTSTORE_OPENSEARCH_URL": world.opensearch.url,
        "EVENTSTORE_OPENSEARCH_INDEX_PREFIX": world.opensearch.index_prefix,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "replayer.main",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_verify_command(world: World) -> None:
    events = await world.store("cli-1", 4)
    await world.publish(events, 1, 2)
    world.index(events)

    code, out, err = await cli(world, "verify", "--aggregate-type", TYPE)
    assert code == 1, (out, err)
    assert "Kafka topic" in out, (out, err)
    assert "2 missing in 1 aggregate" in out, (out, err)
    assert "cli-1 (4 events compared):" in out, (out, err)
    assert "missing 3-4" in out, (out, err)
    assert out.rstrip().endswith("PROBLEMS in 1 aggregate"), (out, err)

    code, out, err = await cli(world, "verify", "--aggregate-type", TYPE, "--json", "--no-index")
    assert code == 1, (out, err)
    body = json.loads(out)
    assert body["ok"] is False
    assert body["index"] is None
    [finding] = body["findings"]
    assert [m["version"] for m in finding["kafka"]["missing"]] == [3, 4]
    assert finding["kafka"]["missing"][0]["event_id"] == str(events[2].event_id)

    code, out, err = await cli(world, "verify", "--aggregate-type", TYPE, "--republish")
    assert code == 0, (out, err)
    assert "Republished 2 events" in out, (out, err)

    code, out, err = await cli(world, "verify", "--aggregate-type", TYPE, "--aggregate-id", "cli-1")
    assert code == 0, (out, err)
    assert out.rstrip().endswith("OK: every stored event compared is in the copies checked"), (
        out,
        err,
    )

    code, _, err = await cli(world, "verify", "--aggregate-type", TYPE, "--since-day", "2026-13-01")
    assert code == 2, err
    assert "is not a day" in err, err
    code, _, err = await cli(world, "verify", "--aggregate-type", TYPE, "--republish", "--no-kafka")
    assert code == 2, err
    assert "republishing needs the Kafka check" in err, err

    code, out, err = await cli(world, "parked")
    assert code == 0, err
    assert out == "no parked aggregates\n"
