"""The OpenSearch Dashboards saved objects only reference fields the index template maps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eventstore.config import OpenSearchSettings
from eventstore.search.documents import index_template

NDJSON = Path(__file__).resolve().parents[2] / "indexer" / "dashboards" / "saved-objects.ndjson"


def referenced_fields(objects: list[dict[str, Any]]) -> set[str]:
    fields: set[str] = set()
    for obj in objects:
        attributes = obj["attributes"]
        if obj["type"] == "index-pattern":
            fields.add(attributes["timeFieldName"])
        if obj["type"] == "search":
            fields.update(attributes["columns"])
            fields.update(field for field, _ in attributes["sort"])
        if obj["type"] == "visualization":
            for agg in json.loads(attributes["visState"])["aggs"]:
                if "field" in agg["params"]:
                    fields.add(agg["params"]["field"])
    return fields


def test_saved_objects_reference_only_mapped_fields() -> None:
    objects = [json.loads(line) for line in NDJSON.read_text().splitlines() if line.strip()]
    assert {o["type"] for o in objects} == {"index-pattern", "search", "visualization"}
    mapped = set(index_template(OpenSearchSettings())["template"]["mappings"]["properties"])
    fields = referenced_fields(objects)
    assert fields, "the saved objects reference fields"
    assert fields <= mapped, fields - mapped


def test_index_pattern_matches_the_alias() -> None:
    objects = [json.loads(line) for line in NDJSON.read_text().splitlines() if line.strip()]
    (pattern,) = [o for o in objects if o["type"] == "index-pattern"]
    assert pattern["attributes"]["title"] == OpenSearchSettings().alias
    assert pattern["attributes"]["timeFieldName"] == "recorded_at"
