"""A synchronous OpenSearch client (indexer, migrations) and the idempotent template set-up."""

from __future__ import annotations

from opensearchpy import OpenSearch

from eventstore.config import OpenSearchSettings
from eventstore.search.documents import index_template, template_name


def make_client(settings: OpenSearchSettings) -> OpenSearch:
    # max_retries=0: we retry ourselves, with backoff, without losing the batch.
    return OpenSearch(**settings.client_options(), max_retries=0)


def ensure_template(client: OpenSearch, settings: OpenSearchSettings) -> None:
    """Put the index template (idempotent: the same body every time)."""
    client.indices.put_index_template(name=template_name(settings), body=index_template(settings))
