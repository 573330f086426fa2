"""The OpenSearch adapter on the real cluster: a request OpenSearch refuses (a 400) is our
bug, not an outage: BackendRejected (INTERNAL), never StorageUnavailable ("retry")."""

from __future__ import annotations

import pytest

from eventstore.config import OpenSearchSettings
from eventstore.domain.errors import BackendRejected
from eventstore.domain.queries import EventQuery
from eventstore.search.opensearch import OpenSearchEventIndex
from eventstore.search.setup import ensure_template, make_client

pytestmark = pytest.mark.integration


async def test_a_refused_query_is_rejected_not_unavailable(
    opensearch_settings: OpenSearchSettings,
) -> None:
    client = make_client(opensearch_settings)
    try:
        ensure_template(client, opensearch_settings)
        # One index behind the alias, so the query reaches a shard that parses it.
        client.indices.create(index=f"{opensearch_settings.index_prefix}-2026.01")
    finally:
        client.close()
    index = OpenSearchEventIndex(opensearch_settings)
    try:
        # A sort value no date field can hold: OpenSearch answers 400 (was StorageUnavailable).
        with pytest.raises(BackendRejected):
            await index.search(EventQuery(after=(10**20, "a", 1)))
    finally:
        await index.close()
