"""Queries across aggregates (by type and time), their pages and the index's freshness."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from eventstore.domain.errors import InvalidArgument
from eventstore.domain.events import MAX_VERSION, RecordedEvent

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
#: google.protobuf.Timestamp's range, 0001-01-01 to 9999-12-31 (datetime's too).
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799

#: Where a page ends, as the index's sort values: (recorded_at ms, aggregate_id, version).
Cursor = tuple[int, str, int]


@dataclass(frozen=True, slots=True)
class EventQuery:
    event_types: tuple[str, ...] = ()
    aggregate_types: tuple[str, ...] = ()
    aggregate_id: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    page_size: int = DEFAULT_PAGE_SIZE
    after: Cursor | None = None
    visible_event_id: UUID | None = None
    count_total: bool = False
    #: answer only once `visible_event_id` is searchable (a consistency token), or fail
    wait_until_visible: bool = False
    #: set by the server, not the client: the aggregate types the caller may query (None: all).
    #: Not part of the fingerprint: it narrows what a page holds, not where the next one starts.
    permitted_types: frozenset[str] | None = None

    def fingerprint(self) -> str:
        """Identifies the filters, so a page token cannot be replayed against other ones."""
        key = json.dumps(
            [
                sorted(self.event_types),
                sorted(self.aggregate_types),
                self.aggregate_id,
                self.start.isoformat() if self.start else None,
                self.end.isoformat() if self.end else None,
            ]
        )
        return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class SearchPage:
    """One page of a search, and what that same search saw of the index."""

    events: list[RecordedEvent]
    #: where the page ended (None: it was the last)
    cursor: Cursor | None = None
    #: how many events match in all, if the query asked
    total: int | None = None
    #: whether the query's `visible_event_id` (of a permitted type) was in the index as this
    #: very search saw it: never a separate look, which may see a later refresh than the page
    visible: bool = False


@dataclass(frozen=True, slots=True)
class IndexProgress:
    """How far the indexers are, from their own reports (-1 / None: nobody reports)."""

    indexer_lag: int = -1
    reported_at: datetime | None = None
    indexed_through: datetime | None = None


@dataclass(frozen=True, slots=True)
class Freshness:
    event_visible: bool = False
    indexer_lag: int = -1
    reported_at: datetime | None = None
    indexed_through: datetime | None = None


@dataclass(frozen=True, slots=True)
class QueryPage:
    events: list[RecordedEvent]
    next_page_token: str
    freshness: Freshness
    total_hits: int | None = None


def encode_consistency_token(last_event_id: UUID) -> str:
    """AppendResponse.consistency_token: the last event of the append (the indexer indexes a
    partition in order, so once it is searchable, so is everything before it there)."""
    raw = json.dumps({"v": 1, "e": str(last_event_id)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_consistency_token(token: str) -> UUID:
    bad = InvalidArgument.of("min_consistency_token", "is not a token this server issued")
    try:
        body = json.loads(base64.urlsafe_b64decode((token + "=" * (-len(token) % 4)).encode()))
        if not isinstance(body, dict) or body.get("v") != 1 or not isinstance(body.get("e"), str):
            raise bad
        return UUID(body["e"])
    except (ValueError, TypeError, binascii.Error) as exc:
        raise bad from exc


def encode_page_token(query: EventQuery, cursor: Cursor) -> str:
    raw = json.dumps({"f": query.fingerprint(), "a": list(cursor)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(query: EventQuery, token: str) -> Cursor:
    bad = InvalidArgument.of("page_token", "is not a page token of this query")
    try:
        body = json.loads(base64.urlsafe_b64decode((token + "=" * (-len(token) % 4)).encode()))
        millis, aggregate_id, version = body["a"]
        if body["f"] != query.fingerprint():
            raise bad
        # `type(...) is int`: JSON's true and false are ints to isinstance.
        if not (
            type(millis) is int
            and MIN_TIMESTAMP_SECONDS * 1000 <= millis < (MAX_TIMESTAMP_SECONDS + 1) * 1000
            and isinstance(aggregate_id, str)
            and type(version) is int
            and 1 <= version <= MAX_VERSION
        ):
            raise bad
        return (millis, aggregate_id, version)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise bad from exc
