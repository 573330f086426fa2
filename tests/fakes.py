"""Test doubles held to the same contracts as the real adapters (tests/contract)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from eventstore.domain.events import RecordedEvent
from eventstore.ports import Delivery, EventPublisher, PublisherUnavailable, PublishFailed


class _Done(Delivery):
    def __init__(self, error: str | None, delay_s: float) -> None:
        self._error = error
        self._delay = delay_s

    async def wait(self) -> None:
        await asyncio.sleep(self._delay)
        if self._error:
            raise PublishFailed(self._error)


class RecordingPublisher(EventPublisher):
    """Keeps what was handed over, in order; can be told to fail the next sends."""

    def __init__(self) -> None:
        self.records: list[RecordedEvent] = []
        self.fail_next = 0
        self.delay_s = 0.0
        #: aggregates whose records always fail delivery
        self.refused: set[str] = set()
        #: every send raises PublisherUnavailable (Kafka as a whole unreachable)
        self.unavailable = False

    async def send(self, events: Sequence[RecordedEvent]) -> Delivery:
        if self.unavailable:
            raise PublisherUnavailable("injected: the producer takes nothing")
        if events and events[0].aggregate_id in self.refused:
            # A failure of this aggregate's own (e.g. a record its topic refuses).
            return _Done(f"injected refusal of {events[0].aggregate_id}", self.delay_s)
        if self.fail_next:
            self.fail_next -= 1
            return _Done("injected delivery failure", self.delay_s)
        self.records.extend(events)
        return _Done(None, self.delay_s)
