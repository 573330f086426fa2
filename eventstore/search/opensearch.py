"""EventIndex on OpenSearch (async client): queries through the alias, paged by search_after."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from opensearchpy import AsyncOpenSearch
from opensearchpy.exceptions import ConnectionError as OpenSearchConnectionError
from opensearchpy.exceptions import TransportError

from eventstore import tracing
from eventstore.config import OpenSearchSettings
from eventstore.domain.errors import BackendRejected, EventStoreError, StorageUnavailable
from eventstore.domain.queries import Cursor, EventQuery, IndexProgress, SearchPage
from eventstore.ports import EventIndex
from eventstore.search.documents import from_document
from eventstore.search.progress import REPORT_MAX_AGE, ProgressReport, combine

SORT = [{"recorded_at": "asc"}, {"aggregate_id": "asc"}, {"version": "asc"}]


def translate(exc: TransportError) -> EventStoreError:
    """By what the caller should do: retry when OpenSearch was unreachable, slow or overloaded
    (no status, 429, 5xx); any other status refused a request we built, which no retry cures."""
    status = exc.status_code
    if (
        isinstance(exc, OpenSearchConnectionError)
        or not isinstance(status, int)
        or status == 429
        or status >= 500
    ):
        return StorageUnavailable(f"OpenSearch: {type(exc).__name__} {status}")
    return BackendRejected(f"OpenSearch refused our request: {status} {exc.error}")


def _millis(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _visible(query: EventQuery) -> dict[str, Any]:
    """The query's visible_event_id, if it is of a type the caller may query."""
    filters: list[dict[str, Any]] = [{"term": {"event_id": str(query.visible_event_id)}}]
    if query.permitted_types is not None:
        filters.append({"terms": {"aggregate_type": sorted(query.permitted_types)}})
    return {"bool": {"filter": filters}}


class OpenSearchEventIndex(EventIndex):
    def __init__(
        self, settings: OpenSearchSettings, topic_of: Callable[[str], str] | None = None
    ) -> None:
        """`topic_of(aggregate_type)`: the Kafka topic of a type, whose partitions the
        indexers report on (without it, callers limited to some types get no progress)."""
        self._settings = settings
        self._topic_of = topic_of
        self._client = AsyncOpenSearch(**settings.client_options())
        # Span attributes per index searched, built once (OpenTelemetry's database conventions).
        self._traced = {
            index: {
                "db.system.name": "opensearch",
                "db.operation.name": "search",
                "db.collection.name": index,
            }
            for index in (settings.alias, settings.state_index)
        }

    async def _call(self, method: Any, **kwargs: Any) -> Any:
        """A search (`method`) of `kwargs["index"]`, in a span of its own when tracing."""
        with tracing.span(
            f"search {kwargs['index']}",
            tracing.SpanKind.CLIENT,
            self._traced.get(kwargs["index"]),
        ):
            try:
                return await method(**kwargs)
            except TransportError as exc:
                raise translate(exc) from exc

    async def search(self, query: EventQuery) -> SearchPage:
        filters: list[dict[str, Any]] = []
        if query.event_types:
            filters.append({"terms": {"event_type": list(query.event_types)}})
        if query.aggregate_types:
            filters.append({"terms": {"aggregate_type": list(query.aggregate_types)}})
        if query.permitted_types is not None:
            filters.append({"terms": {"aggregate_type": sorted(query.permitted_types)}})
        if query.aggregate_id:
            filters.append({"term": {"aggregate_id": query.aggregate_id}})
        if query.start or query.end:
            bounds: dict[str, int] = {}
            if query.start:
                bounds["gte"] = _millis(query.start)
            if query.end:
                bounds["lt"] = _millis(query.end)
            filters.append({"range": {"recorded_at": {**bounds, "format": "epoch_millis"}}})
        body: dict[str, Any] = {
            "size": query.page_size,
            "sort": SORT,
            "query": {"bool": {"filter": filters}},
            "track_total_hits": query.count_total,
        }
        if query.after:
            body["search_after"] = list(query.after)
        if query.visible_event_id is not None:
            # Asked in the same request as the page, so both describe one view of the index:
            # a global aggregation counts over every document, whatever the query's filters.
            body["aggs"] = {
                "visible": {"global": {}, "aggs": {"event": {"filter": _visible(query)}}}
            }
        response = await self._call(
            self._client.search,
            index=self._settings.alias,
            body=body,
            ignore_unavailable=True,
            allow_no_indices=True,
        )
        hits = response["hits"]["hits"]
        cursor: Cursor | None = None
        if len(hits) == query.page_size:
            millis, aggregate_id, version = hits[-1]["sort"]
            cursor = (int(millis), str(aggregate_id), int(version))
        visible = False
        if query.visible_event_id is not None:
            # No index behind the alias yet: no aggregation either, and nothing is visible.
            found = response.get("aggregations", {}).get("visible", {}).get("event", {})
            visible = int(found.get("doc_count", 0)) > 0
        return SearchPage(
            events=[from_document(hit["_source"]) for hit in hits],
            cursor=cursor,
            total=int(response["hits"]["total"]["value"]) if query.count_total else None,
            visible=visible,
        )

    async def progress(self, permitted_types: frozenset[str] | None = None) -> IndexProgress:
        if permitted_types is not None and self._topic_of is None:
            return IndexProgress()  # which partitions are theirs cannot be told
        since = datetime.now(UTC) - REPORT_MAX_AGE
        reports = await self._call(
            self._client.search,
            index=self._settings.state_index,
            body={"size": 1000, "query": {"range": {"reported_at": {"gte": since.isoformat()}}}},
            ignore_unavailable=True,
            allow_no_indices=True,
        )
        parsed = (
            report
            for hit in reports["hits"]["hits"]
            if (report := ProgressReport.from_document(hit["_source"])) is not None
        )
        if permitted_types is None or self._topic_of is None:
            combined = combine(parsed)
        else:
            topics = {self._topic_of(t) for t in permitted_types}
            combined = combine(parsed, wanted=topics.__contains__)
        if combined is None:
            return IndexProgress()
        return IndexProgress(
            indexer_lag=combined.lag,
            reported_at=combined.reported_at,
            indexed_through=combined.indexed_through,
        )

    async def close(self) -> None:
        await self._client.close()
