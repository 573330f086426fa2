"""A synchronous OpenSearch client (indexer, migrations) and the idempotent template set-up."""

from __future__ import annotations

import structlog
from opensearchpy import OpenSearch

from eventstore.config import OpenSearchSettings
from eventstore.search.documents import (
    TEMPLATE_VERSION,
    index_mappings,
    index_template,
    template_name,
)

log = structlog.get_logger(__name__)


def make_client(settings: OpenSearchSettings) -> OpenSearch:
    # max_retries=0: we retry ourselves, with backoff, without losing the batch.
    return OpenSearch(**settings.client_options(), max_retries=0)


def installed_version(client: OpenSearch, settings: OpenSearchSettings) -> int | None:
    """The version of our template in the cluster (None: none installed)."""
    found = client.indices.get_index_template(name=template_name(settings), ignore=[404])
    for entry in found.get("index_templates", ()):
        meta = entry.get("index_template", {}).get("_meta") or {}
        return int(meta.get("version", 0))
    return None


def ensure_template(client: OpenSearch, settings: OpenSearchSettings) -> None:
    """Put the index template (idempotent: the same body every time), and the same mappings on
    the existing monthly indices, which the template alone does not change: their strict
    mapping would refuse documents with a field added since they were created.

    A newer template (a later indexer or migration already ran) is left as it is, so an older
    process starting during a rolling upgrade does not take fields away from next month's
    index."""
    installed = installed_version(client, settings)
    if installed is not None and installed > TEMPLATE_VERSION:
        log.warning(
            "a newer index template is installed; leaving it",
            installed=installed,
            ours=TEMPLATE_VERSION,
        )
        return
    client.indices.put_index_template(name=template_name(settings), body=index_template(settings))
    # Mappings only grow: putting the same properties again is a no-op, and a new field is
    # added to every index of the prefix (open ones; a closed index takes no documents).
    client.indices.put_mapping(
        index=f"{settings.index_prefix}-*",
        body={"properties": index_mappings()["properties"]},
        allow_no_indices=True,
        expand_wildcards="open",
    )
