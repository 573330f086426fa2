"""The SchemaRegistry contract, for Cassandra and the in-memory fake."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

from eventstore.domain.schemas import (
    Compatibility,
    SchemaFormat,
    SchemaVersion,
    UpcastKind,
    UpcastOp,
)
from eventstore.ports import SchemaRegistry
from tests.support import unique

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def version(aggregate_type: str, number: int, document: object = True) -> SchemaVersion:
    return SchemaVersion(
        aggregate_type=aggregate_type,
        event_type="Placed",
        version=number,
        format=SchemaFormat.JSON_SCHEMA,
        document=json.dumps(document).encode(),
        compatibility=Compatibility.BACKWARD,
        upcast=(
            UpcastOp(UpcastKind.RENAME, ("name",), to="full_name"),
            UpcastOp(UpcastKind.ADD, ("currency",), value_json='"EUR"'),
            UpcastOp(UpcastKind.MOVE, ("a", "b"), from_path=("c",)),
            UpcastOp(UpcastKind.REMOVE, ("x~/y",)),
        )
        if number > 1
        else (),
        registered_at=T0,
        registered_by="alice",
    )


class SchemaRegistryContract:
    async def test_none_yet(self, schemas: SchemaRegistry) -> None:
        assert await schemas.versions(unique("Order"), "Placed") == []
        assert await schemas.event_types(unique("Order")) == []

    async def test_versions_read_back_ascending_and_whole(self, schemas: SchemaRegistry) -> None:
        aggregate_type = unique("Order")
        second = version(aggregate_type, 2, {"type": "object", "x-personal": True})
        first = version(aggregate_type, 1, {"type": "object"})
        assert await schemas.add(first)
        assert await schemas.add(second)
        assert await schemas.versions(aggregate_type, "Placed") == [first, second]
        assert await schemas.versions(aggregate_type, "Other") == []
        assert await schemas.event_types(aggregate_type) == ["Placed"]

    async def test_a_version_is_registered_once(self, schemas: SchemaRegistry) -> None:
        aggregate_type = unique("Order")
        first = version(aggregate_type, 1, {"type": "object"})
        assert await schemas.add(first)
        assert not await schemas.add(version(aggregate_type, 1, {"type": "string"}))
        assert await schemas.versions(aggregate_type, "Placed") == [first]

    async def test_racing_registrations_of_one_version_have_one_winner(
        self, schemas: SchemaRegistry
    ) -> None:
        aggregate_type = unique("Order")
        candidates = [version(aggregate_type, 1, {"title": str(i)}) for i in range(8)]
        applied = await asyncio.gather(*(schemas.add(c) for c in candidates))
        assert sum(applied) == 1
        winner = candidates[applied.index(True)]
        assert await schemas.versions(aggregate_type, "Placed") == [winner]
