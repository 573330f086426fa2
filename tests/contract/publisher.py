"""The EventPublisher contract: what is sent comes out, per aggregate in order."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from eventstore.domain.events import RecordedEvent
from eventstore.ports import EventPublisher
from tests.support import unique

ReadBack = Callable[[str, int], Awaitable[list[RecordedEvent]]]


def recorded(aggregate_id: str, aggregate_type: str, versions: range) -> list[RecordedEvent]:
    return [
        RecordedEvent(
            event_id=uuid.uuid4(),
            aggregate_id=aggregate_id,
            aggregate_type=aggregate_type,
            version=v,
            event_type="Happened",
            data=b'{"v": %d}' % v,
            content_type="application/json",
            metadata={"k": "v"},
            recorded_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
        for v in versions
    ]


class EventPublisherContract:
    async def test_sent_events_come_out_in_order(
        self, publisher: EventPublisher, read_back: ReadBack
    ) -> None:
        aggregate_type = unique("T").replace("-", "")
        a = recorded(unique("a"), aggregate_type, range(1, 4))
        b = recorded(unique("b"), aggregate_type, range(1, 3))
        deliveries = [
            await publisher.send(a[:2]),
            await publisher.send(b),
            await publisher.send(a[2:]),
        ]
        for delivery in deliveries:
            await delivery.wait()
        out = await read_back(aggregate_type, 5)
        assert [
            (e.aggregate_id, e.version) for e in out if e.aggregate_id == a[0].aggregate_id
        ] == [(e.aggregate_id, e.version) for e in a]
        assert sorted((e.event_id for e in out), key=str) == sorted(
            (e.event_id for e in a + b), key=str
        )
        assert {e.data for e in out} == {e.data for e in a + b}
