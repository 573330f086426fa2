"""Read an aggregate's events, page by page, and describe an aggregate."""

from __future__ import annotations

from collections.abc import AsyncIterator

from eventstore.domain.access import Operation, Principal
from eventstore.domain.errors import AggregateNotFound
from eventstore.domain.events import AggregateInfo, Direction, RecordedEvent
from eventstore.domain.validation import ReadRequest
from eventstore.ports import EventStorage


class ReadAggregate:
    def __init__(self, storage: EventStorage, page_size: int) -> None:
        self._storage = storage
        self._page_size = page_size

    def page_events(self, request: ReadRequest) -> int:
        """The most events one page of `request` holds."""
        if request.max_count is None:
            return self._page_size
        return min(self._page_size, request.max_count)

    async def pages(
        self, request: ReadRequest, principal: Principal
    ) -> AsyncIterator[list[RecordedEvent]]:
        """Yield the events in pages; never holds more than one page in memory."""
        remaining = request.max_count
        start = request.from_version
        first_page = True
        while remaining is None or remaining > 0:
            limit = self._page_size if remaining is None else min(self._page_size, remaining)
            page = await self._storage.read(request.aggregate_id, start, request.direction, limit)
            if not page:
                if first_page:
                    # Past the end (or no such aggregate): still only for those who may read it.
                    info = await self._storage.describe(request.aggregate_id)
                    if info is None:
                        raise AggregateNotFound(request.aggregate_id)
                    principal.require_existing(
                        Operation.READ, info.aggregate_type, AggregateNotFound(request.aggregate_id)
                    )
                return
            if first_page:
                # Every event of an aggregate has its type: the first one tells.
                principal.require_existing(
                    Operation.READ, page[0].aggregate_type, AggregateNotFound(request.aggregate_id)
                )
            first_page = False
            yield page
            if len(page) < limit:
                return
            if remaining is not None:
                remaining -= len(page)
            last = page[-1].version
            if request.direction is Direction.FORWARDS:
                start = last + 1
            elif last <= 1:
                return
            else:
                start = last - 1


class DescribeAggregate:
    def __init__(self, storage: EventStorage) -> None:
        self._storage = storage

    async def __call__(self, aggregate_id: str, principal: Principal) -> AggregateInfo:
        info = await self._storage.describe(aggregate_id)
        if info is None:
            raise AggregateNotFound(aggregate_id)
        principal.require_existing(
            Operation.READ, info.aggregate_type, AggregateNotFound(aggregate_id)
        )
        return info
