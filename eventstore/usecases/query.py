"""Query events across aggregates from the search index, with how fresh the index is; and,
given a consistency token, only once the write it came from is searchable (read your own
writes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from eventstore.domain.access import Operation, Principal
from eventstore.domain.errors import NotYetSearchable
from eventstore.domain.queries import EventQuery, Freshness, QueryPage, encode_page_token
from eventstore.ports import EventIndex

#: Waiting for a write to become searchable: the first look again after this, then twice as
#: long each time up to POLL_MAX_S (OpenSearch makes new documents searchable every second).
POLL_FIRST_S = 0.05
POLL_MAX_S = 0.25


class QueryEvents:
    def __init__(
        self,
        index: EventIndex,
        max_wait_s: float = 10.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._index = index
        self._max_wait_s = max_wait_s
        self._sleep = sleep
        self._clock = clock

    async def __call__(
        self, query: EventQuery, principal: Principal, wait_s: float | None = None
    ) -> QueryPage:
        """One page. With `query.wait_until_visible`, searched again until the page's own view
        of the index holds `query.visible_event_id`, for at most `wait_s` (the caller's
        deadline) and the server's limit; then NotYetSearchable."""
        # Named types must all be granted; with none named, only the granted ones are searched.
        query = replace(
            query, permitted_types=principal.narrow(Operation.QUERY, query.aggregate_types)
        )
        budget = self._max_wait_s if wait_s is None else max(min(wait_s, self._max_wait_s), 0.0)
        give_up = self._clock() + budget
        delay = POLL_FIRST_S
        while True:
            page, progress = await asyncio.gather(
                self._index.search(query), self._index.progress(query.permitted_types)
            )
            if not query.wait_until_visible or page.visible:
                break
            left = give_up - self._clock()
            if left <= 0:
                # Of a type the caller may not query, it is never "visible": the same answer
                # as for a write not indexed yet, so nothing leaks.
                raise NotYetSearchable(budget, progress.indexer_lag, progress.indexed_through)
            await self._sleep(min(delay, left))
            delay = min(delay * 2, POLL_MAX_S)
        token = encode_page_token(query, page.cursor) if page.cursor else ""
        freshness = Freshness(
            event_visible=page.visible,
            indexer_lag=progress.indexer_lag,
            reported_at=progress.reported_at,
            indexed_through=progress.indexed_through,
        )
        return QueryPage(page.events, token, freshness, page.total)
