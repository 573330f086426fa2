"""The publication use case over fakes: order per aggregate, recovery through the relay."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from eventstore.domain.events import Direction, NewEvent
from eventstore.storage.memory import InMemoryEventStorage, InMemoryPublicationLog
from eventstore.usecases.publish import Publication
from tests.fakes import RecordingPublisher

NOW = datetime(2026, 1, 1, tzinfo=UTC)


async def committed(storage: InMemoryEventStorage, aggregate: str, at: int, count: int) -> None:
    events = [NewEvent(uuid.uuid4(), "E", b"{}", "application/json") for _ in range(count)]
    await storage.append(aggregate, "T", at, events, NOW)


def first_copies(publisher: RecordingPublisher, aggregate: str) -> list[int]:
    seen: list[int] = []
    for event in publisher.records:
        if event.aggregate_id == aggregate and event.version not in seen:
            seen.append(event.version)
    return seen


async def test_later_append_published_first_still_comes_out_in_order() -> None:
    storage, outbox, publisher = (
        InMemoryEventStorage(),
        InMemoryPublicationLog(),
        RecordingPublisher(),
    )
    publication = Publication(storage, outbox, publisher)
    await committed(storage, "a", 0, 2)
    await committed(storage, "a", 2, 2)
    later = await storage.read("a", 3, Direction.FORWARDS, 10)
    earlier = await storage.read("a", 1, Direction.FORWARDS, 2)
    publication.committed(later)  # the second append's task runs first
    publication.committed(earlier)
    await publication.stop(grace_s=5)
    assert first_copies(publisher, "a") == [1, 2, 3, 4]
    assert await outbox.published_through("a") == 4


async def test_failed_delivery_is_recovered_by_the_relay() -> None:
    storage, outbox, publisher = (
        InMemoryEventStorage(),
        InMemoryPublicationLog(),
        RecordingPublisher(),
    )
    publication = Publication(storage, outbox, publisher, min_age_s=0)
    await outbox.mark_pending("a", 3, NOW)
    await committed(storage, "a", 0, 3)
    publisher.fail_next = 1
    publication.committed(await storage.read("a", 1, Direction.FORWARDS, 10))
    await publication.drain()
    assert first_copies(publisher, "a") == []
    assert await outbox.pending(older_than=NOW + timedelta(days=1)) == ["a"]
    assert await publication.relay_once() == 1
    await publication.drain()
    assert first_copies(publisher, "a") == [1, 2, 3]
    assert await outbox.published_through("a") == 3
    assert await outbox.pending(older_than=NOW + timedelta(days=1)) == []


async def test_relay_leaves_young_markers_to_the_request_path() -> None:
    storage, outbox, publisher = (
        InMemoryEventStorage(),
        InMemoryPublicationLog(),
        RecordingPublisher(),
    )
    publication = Publication(storage, outbox, publisher, min_age_s=60)
    await outbox.mark_pending("a", 1, datetime.now(UTC))
    await committed(storage, "a", 0, 1)
    assert await publication.relay_once() == 0
    assert publisher.records == []


async def test_gap_left_by_another_process_is_filled_from_storage() -> None:
    storage, outbox, publisher = (
        InMemoryEventStorage(),
        InMemoryPublicationLog(),
        RecordingPublisher(),
    )
    publication = Publication(storage, outbox, publisher)
    await committed(storage, "a", 0, 3)  # versions 1-3 committed elsewhere, not published
    await committed(storage, "a", 3, 1)
    publication.committed(await storage.read("a", 4, Direction.FORWARDS, 10))
    await publication.stop(grace_s=5)
    assert first_copies(publisher, "a") == [1, 2, 3, 4]
