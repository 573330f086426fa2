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
    """Put the index template (idempotent: the same body every time), and add the fields they
    lack to the existing monthly indices, which the template alone does not change: their
    strict mapping would refuse documents with a field added since.

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
    add_missing_fields(client, settings)


def add_missing_fields(client: OpenSearch, settings: OpenSearchSettings) -> None:
    """Add the template's fields that an existing index of the prefix lacks (mappings only
    grow; a field an index maps differently is left as it is, and documents that index
    refuses for it are indexed in a reduced form)."""
    wanted = index_mappings()["properties"]
    existing = client.indices.get_mapping(
        index=f"{settings.index_prefix}-*", allow_no_indices=True, expand_wildcards="open"
    )
    for index, found in existing.items():
        have = (found.get("mappings") or {}).get("properties") or {}
        missing = {name: wanted[name] for name in wanted if name not in have}
        if missing:
            client.indices.put_mapping(index=index, body={"properties": missing})
            log.info("added fields to an existing index", index=index, fields=sorted(missing))
