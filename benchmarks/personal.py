"""What sealing personal data costs an append (#19): the append use case over the real
Cassandra adapter (no gRPC, no Kafka: only what sealing adds shows), one client, sequential
single-event appends of ~100 B JSON, after a warm-up:

* plain / cached, same aggregate: no subject, or every append names the same subject (its key
  and the subject-aggregate record are cached: AES-GCM only);
* plain / sealed, new aggregate: a new aggregate each time; sealed names the same subject
  (plus the logged batch that records subject <-> aggregate);
* new subject: a new subject each time (plus the key's conditional insert, IF NOT EXISTS).

Also the CPU of sealing and opening one event. A fresh keyspace, dropped at the end. Prints a
table; asserts nothing.

    python -m benchmarks.personal [--appends 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import timeit
import uuid
from collections.abc import Callable

from cassandra.cluster import Cluster

from benchmarks.support import PAYLOAD as DOCUMENT
from eventstore.config import CassandraSettings
from eventstore.domain import personal
from eventstore.domain.access import UNRESTRICTED
from eventstore.domain.events import AppendRequest, ExpectedVersion, NewEvent, RecordedEvent
from eventstore.domain.personal import MasterKey, MasterKeys, Personal, SubjectKey
from eventstore.storage.cassandra import CassandraEventStorage, apply_schema
from eventstore.storage.subject_keys import CassandraSubjectKeys
from eventstore.usecases.append import AppendEvents, utc_now_ms
from eventstore.usecases.personal import Keyring, PersonalData

PAYLOAD = json.dumps(DOCUMENT, separators=(",", ":")).encode()


def request(aggregate_id: str, subject: str | None) -> AppendRequest:
    metadata = {personal.SUBJECT_KEY: subject} if subject else {}
    event = NewEvent(uuid.uuid4(), "Registered", PAYLOAD, "application/json", metadata)
    return AppendRequest(aggregate_id, "User", ExpectedVersion.any(), (event,))


async def timed(
    append: AppendEvents, count: int, make: Callable[[int], AppendRequest]
) -> list[float]:
    latencies = []
    for i in range(count):
        started = time.perf_counter()
        await append(make(i), UNRESTRICTED)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def crypto_us() -> tuple[float, float]:
    key = SubjectKey.generate("p")
    event = NewEvent(uuid.uuid4(), "E", PAYLOAD, "application/json", {"data_subject": "p"})
    sealed = personal.seal_event(event, key, Personal("p"), "a", 1)
    stored = RecordedEvent(
        event.event_id, "a", "User", 1, "E", sealed.data, "application/json", sealed.metadata,
        utc_now_ms(),
    )  # fmt: skip
    runs = 20_000
    seal = timeit.timeit(
        lambda: personal.seal_event(event, key, Personal("p"), "a", 1), number=runs
    )
    opened = timeit.timeit(lambda: personal.open_event(stored, key), number=runs)
    return seal / runs * 1e6, opened / runs * 1e6


async def main(appends: int) -> None:
    settings = CassandraSettings(keyspace=f"bench_personal_{uuid.uuid4().hex[:8]}")
    await apply_schema(settings)
    storage = await CassandraEventStorage.connect(settings)
    try:
        keys = await CassandraSubjectKeys.create_store(storage.connection)
        sealing = PersonalData(Keyring(keys, MasterKeys(MasterKey(b"b" * 32))), keys)
        plain = AppendEvents(storage)
        sealed = AppendEvents(storage, personal=sealing)
        run = uuid.uuid4().hex[:6]
        workloads: list[tuple[str, AppendEvents, Callable[[int], AppendRequest]]] = [
            ("plain, same agg", plain, lambda i: request(f"plain-{run}", None)),
            ("cached, same agg", sealed, lambda i: request(f"cached-{run}", "person-1")),
            ("plain, new agg", plain, lambda i: request(f"plain-{run}-{i}", None)),
            ("sealed, new agg", sealed, lambda i: request(f"agg-{run}-{i}", "person-2")),
            ("new subject", sealed, lambda i: request(f"subj-{run}-{i}", f"person-{run}-{i}")),
        ]
        print(f"{appends} sequential single-event appends each, one client, after 50 unmeasured")
        print(f"{'workload':<18} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
        for name, append, make in workloads:
            await timed(append, 50, lambda i, make=make: make(i + 1_000_000))  # type: ignore[misc]
            latencies = sorted(await timed(append, appends, make))
            p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
            print(
                f"{name:<18} {statistics.median(latencies):8.2f} {p99:8.2f} "
                f"{statistics.fmean(latencies):8.2f}"
            )
        seal_us, open_us = crypto_us()
        print(f"CPU per event: seal {seal_us:.1f} us, open {open_us:.1f} us ({len(PAYLOAD)} B)")
    finally:
        await storage.close()
        hosts, port = settings.contact_points()
        cluster = Cluster(hosts, port=port, protocol_version=5)
        try:
            cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {settings.keyspace}", timeout=120)
        finally:
            cluster.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--appends", type=int, default=300)
    asyncio.run(main(parser.parse_args().appends))
