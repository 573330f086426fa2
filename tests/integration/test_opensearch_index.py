"""The event index contract against the real OpenSearch adapter, with documents written the
way the indexer writes them (its bulk items, into the monthly indices behind the alias)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator, Sequence

import pytest
from opensearchpy import OpenSearch

from eventstore.config import OpenSearchSettings
from eventstore.domain.access import UNRESTRICTED
from eventstore.domain.events import RecordedEvent
from eventstore.domain.queries import EventQuery
from eventstore.search.documents import DEFAULT_MAX_DOCUMENT_BYTES, index_name
from eventstore.search.opensearch import OpenSearchEventIndex
from eventstore.search.setup import ensure_template, make_client
from eventstore.usecases.query import QueryEvents
from indexer.bulk import make_item
from tests.contract.index import Add, EventIndexContract
from tests.contract.publisher import recorded
from tests.support import unique

pytestmark = pytest.mark.integration


class TestOpenSearchEventIndex(EventIndexContract):
    @pytest.fixture
    def client(self, opensearch_settings: OpenSearchSettings) -> Iterator[OpenSearch]:
        client = make_client(opensearch_settings)
        ensure_template(client, opensearch_settings)
        yield client
        client.close()

    @pytest.fixture
    async def index(
        self, opensearch_settings: OpenSearchSettings
    ) -> AsyncIterator[OpenSearchEventIndex]:
        index = OpenSearchEventIndex(opensearch_settings)
        yield index
        await index.close()

    @pytest.fixture
    def add(self, client: OpenSearch, opensearch_settings: OpenSearchSettings) -> Add:
        def write(events: Sequence[RecordedEvent]) -> None:
            body = b"".join(
                make_item(
                    None,
                    event,
                    index_name(opensearch_settings, event.recorded_at),
                    DEFAULT_MAX_DOCUMENT_BYTES,
                ).lines
                for event in events
            )
            response = client.bulk(body=body, refresh="true")
            assert not response["errors"], response

        async def add(events: Sequence[RecordedEvent]) -> None:
            await asyncio.to_thread(write, events)

        return add


async def test_a_query_says_an_event_is_visible_exactly_when_its_page_saw_it(
    opensearch_settings: OpenSearchSettings,
) -> None:
    """The freshness answer describes the same view of the index as the page: an event the page
    should hold is "visible" if and only if the page holds it, even while refreshes land between
    the requests (a page once lacked the just-appended event yet called it visible)."""
    client = make_client(opensearch_settings)
    ensure_template(client, opensearch_settings)
    index = OpenSearchEventIndex(opensearch_settings)
    query_events = QueryEvents(index)
    disagreements = []
    try:
        for round_ in range(60):
            (event,) = recorded(unique("race"), "Race", range(1, 2))
            item = make_item(
                None,
                event,
                index_name(opensearch_settings, event.recorded_at),
                DEFAULT_MAX_DOCUMENT_BYTES,
            )
            # Written but not yet searchable; a refresh lands at some moment during the query.
            await asyncio.to_thread(client.bulk, body=item.lines, refresh="false")

            async def refresh_soon(delay_s: float) -> None:
                await asyncio.sleep(delay_s)
                await asyncio.to_thread(
                    client.indices.refresh, index=f"{opensearch_settings.index_prefix}-*"
                )

            refresh = asyncio.create_task(refresh_soon(random.uniform(0, 0.015)))
            query = EventQuery(aggregate_id=event.aggregate_id, visible_event_id=event.event_id)
            page = await query_events(query, UNRESTRICTED)
            await refresh
            in_page = [e.event_id for e in page.events] == [event.event_id]
            if in_page != page.freshness.event_visible:
                disagreements.append((round_, in_page, page.freshness.event_visible))
    finally:
        await index.close()
        client.close()
    assert not disagreements, (
        f"page and visibility disagree (round, in page, visible): {disagreements}"
    )
