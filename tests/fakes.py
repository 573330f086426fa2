"""Test doubles held to the same contracts as the real adapters (tests/contract)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from eventstore.domain.events import RecordedEvent
from eventstore.ports import Delivery, EventPublisher, PublishFailed


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

    async def send(self, events: Sequence[RecordedEvent]) -> Delivery:
        if self.fail_next:
            self.fail_next -= 1
            return _Done("injected delivery failure", self.delay_s)
        self.records.extend(events)
        return _Done(None, self.delay_s)
