"""Query events across aggregates from the search index, with how fresh the index is."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from eventstore.domain.access import Operation, Principal
from eventstore.domain.queries import EventQuery, QueryPage, encode_page_token
from eventstore.ports import EventIndex


class QueryEvents:
    def __init__(self, index: EventIndex) -> None:
        self._index = index

    async def __call__(self, query: EventQuery, principal: Principal) -> QueryPage:
        # Named types must all be granted; with none named, only the granted ones are searched.
        query = replace(
            query, permitted_types=principal.narrow(Operation.QUERY, query.aggregate_types)
        )
        (events, cursor, total), freshness = await asyncio.gather(
            self._index.search(query),
            self._index.freshness(query.visible_event_id, query.permitted_types),
        )
        token = encode_page_token(query, cursor) if cursor else ""
        return QueryPage(events, token, freshness, total)
