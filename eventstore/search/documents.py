"""How an event becomes an OpenSearch document, and the index template that maps it."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime
from typing import Any

from eventstore.config import OpenSearchSettings
from eventstore.domain.events import RecordedEvent
from eventstore.domain.validation import is_json_content_type

#: Bump when the mapping changes; recorded in the template's _meta.
TEMPLATE_VERSION = 1


def index_name(settings: OpenSearchSettings, recorded_at: datetime) -> str:
    """Monthly indices: an event's index follows from its own time, so a re-delivered event
    always lands on its earlier copy (same index, same _id) instead of beside it."""
    return f"{settings.index_prefix}-{recorded_at:%Y.%m}"


def to_document(event: RecordedEvent) -> dict[str, Any]:
    document: dict[str, Any] = {
        "event_id": str(event.event_id),
        "aggregate_id": event.aggregate_id,
        "aggregate_type": event.aggregate_type,
        "event_type": event.event_type,
        "version": event.version,
        "recorded_at": event.recorded_at.isoformat(timespec="milliseconds"),
        "content_type": event.content_type,
    }
    if event.metadata:
        document["metadata"] = dict(event.metadata)
    # The exact bytes, so a query returns what was appended; `data` below is for searching.
    document["payload"] = base64.b64encode(event.data).decode()
    if is_json_content_type(event.content_type) and event.data:
        data = json.loads(event.data)
        # flat_object wants an object at the top: wrap anything else.
        document["data"] = data if isinstance(data, dict) else {"value": data}
    return document


def from_document(source: dict[str, Any]) -> RecordedEvent:
    return RecordedEvent(
        event_id=uuid.UUID(source["event_id"]),
        aggregate_id=source["aggregate_id"],
        aggregate_type=source["aggregate_type"],
        version=int(source["version"]),
        event_type=source["event_type"],
        data=base64.b64decode(source.get("payload", "")),
        content_type=source["content_type"],
        metadata={str(k): str(v) for k, v in (source.get("metadata") or {}).items()},
        recorded_at=datetime.fromisoformat(source["recorded_at"]),
    )


def index_template(settings: OpenSearchSettings) -> dict[str, Any]:
    keyword = {"type": "keyword"}
    return {
        "index_patterns": [f"{settings.index_prefix}-*"],
        "priority": 100,
        "_meta": {"owner": "eventstore", "version": TEMPLATE_VERSION},
        "template": {
            "settings": {
                "number_of_shards": settings.shards,
                "number_of_replicas": settings.replicas,
                "refresh_interval": "1s",
            },
            "mappings": {
                # Documents are ours: an unknown field is a bug to surface, not to absorb.
                "dynamic": "strict",
                "properties": {
                    "event_id": keyword,
                    "aggregate_id": keyword,
                    "aggregate_type": keyword,
                    "event_type": keyword,
                    "version": {"type": "long"},
                    "recorded_at": {"type": "date", "format": "strict_date_optional_time"},
                    "content_type": keyword,
                    "metadata": {"type": "flat_object"},
                    "data": {"type": "flat_object"},
                    "payload": {"type": "binary"},
                },
            },
            "aliases": {settings.alias: {}},
        },
    }


def template_name(settings: OpenSearchSettings) -> str:
    return f"{settings.index_prefix}-template"
