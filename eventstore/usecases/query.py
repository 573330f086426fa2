"""Query events across aggregates from the search index, with how fresh the index is."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from eventstore.domain.access import Operation, Principal
from eventstore.domain.queries import EventQuery, Freshness, QueryPage, encode_page_token
from eventstore.ports import EventIndex


class QueryEvents:
    def __init__(self, index: EventIndex) -> None:
        self._index = index

    async def __call__(self, query: EventQuery, principal: Principal) -> QueryPage:
        # Named types must all be granted; with none named, only the granted ones are searched.
        query = replace(
            query, permitted_types=principal.narrow(Operation.QUERY, query.aggregate_types)
        )
        page, progress = await asyncio.gather(
            self._index.search(query), self._index.progress(query.permitted_types)
        )
        token = encode_page_token(query, page.cursor) if page.cursor else ""
        freshness = Freshness(
            event_visible=page.visible,
            indexer_lag=progress.indexer_lag,
            reported_at=progress.reported_at,
            indexed_through=progress.indexed_through,
        )
        return QueryPage(page.events, token, freshness, page.total)
