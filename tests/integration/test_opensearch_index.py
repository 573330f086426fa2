"""The event index contract against the real OpenSearch adapter, with documents written the
way the indexer writes them (its bulk items, into the monthly indices behind the alias)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence

import pytest
from opensearchpy import OpenSearch

from eventstore.config import OpenSearchSettings
from eventstore.domain.events import RecordedEvent
from eventstore.search.documents import DEFAULT_MAX_DOCUMENT_BYTES, index_name
from eventstore.search.opensearch import OpenSearchEventIndex
from eventstore.search.setup import ensure_template, make_client
from indexer.bulk import make_item
from tests.contract.index import Add, EventIndexContract

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
