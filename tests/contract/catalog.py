"""The AggregateCatalog contract, for the Cassandra adapter and the in-memory fake."""

from __future__ import annotations

from datetime import UTC, datetime

from eventstore.ports import AggregateCatalog
from tests.support import unique

DAY1 = datetime(2026, 3, 1, 23, 59, tzinfo=UTC)
DAY2 = datetime(2026, 3, 2, 0, 1, tzinfo=UTC)


class AggregateCatalogContract:
    async def test_aggregates_are_listed_by_type_and_day(self, catalog: AggregateCatalog) -> None:
        kind = unique("T")
        await catalog.add([(kind, "a"), (kind, "b"), (unique("U"), "c")], DAY1)
        await catalog.add([(kind, "d")], DAY2)
        await catalog.add([(kind, "a")], DAY1)  # once more: still once
        assert sorted(await catalog.aggregates(kind, DAY1.date())) == ["a", "b"]
        assert await catalog.aggregates(kind, DAY2.date()) == ["d"]

    async def test_types_are_registered_once_with_their_first_day(
        self, catalog: AggregateCatalog
    ) -> None:
        kind = unique("T")
        assert await catalog.register_type(kind, DAY1) is None
        assert await catalog.register_type(kind, DAY2) is None
        assert (await catalog.types())[kind] == DAY1.date()

    async def test_types_sharing_a_topic_name_are_refused(self, catalog: AggregateCatalog) -> None:
        stem = unique("Col")
        assert await catalog.register_type(f"{stem}.a", DAY1) is None
        assert await catalog.register_type(f"{stem}_a", DAY1) == f"{stem}.a"
        assert f"{stem}_a" not in await catalog.types()
