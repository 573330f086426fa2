"""Append events to an aggregate: optimistic concurrency and idempotent retries."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from uuid import UUID

import structlog

from eventstore.domain.access import Operation, Principal, record_principal
from eventstore.domain.errors import EventIdReused, InvalidArgument, WrongExpectedVersion
from eventstore.domain.events import (
    AppendRequest,
    AppendResult,
    Direction,
    Expectation,
    NewEvent,
    RecordedEvent,
)
from eventstore.domain.personal import SUBJECT_KEY, PersonalDataNotConfigured
from eventstore.domain.validation import RESERVED_METADATA_PREFIX
from eventstore.failpoints import Failpoints
from eventstore.ports import AggregateCatalog, Committed, EventStorage, ExistingEvent, Rejected
from eventstore.usecases.publish import Publication
from eventstore.usecases.schemas import SchemaCatalog

if TYPE_CHECKING:
    from eventstore.usecases.personal import PersonalData

log = structlog.get_logger(__name__)

#: Seals an append's events for the version it is written at (see usecases/personal.py).
Sealer = Callable[[int], tuple[NewEvent, ...]]


class ContentionExhausted(Exception):
    """An ANY/STREAM_EXISTS append lost the race too many times in a row (retryable)."""

    def __init__(self, aggregate_id: str, attempts: int) -> None:
        self.aggregate_id = aggregate_id
        self.attempts = attempts
        super().__init__(f"aggregate {aggregate_id!r} too contended: {attempts} attempts lost")


def utc_now_ms() -> datetime:
    """Now, at the millisecond precision Cassandra stores, so what we answer is what we read."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class AppendEvents:
    def __init__(
        self,
        storage: EventStorage,
        clock: Callable[[], datetime] = utc_now_ms,
        max_attempts: int = 64,
        publication: Publication | None = None,
        catalog: AggregateCatalog | None = None,
        failpoints: Failpoints | None = None,
        personal: PersonalData | None = None,
        schemas: SchemaCatalog | None = None,
    ) -> None:
        self._storage = storage
        self._clock = clock
        self._max_attempts = max_attempts
        self._publication = publication
        self._catalog = catalog
        self._known_types: set[str] = set()
        self._failpoints = failpoints or Failpoints()
        #: None: no master key; events naming a data subject are refused
        self._personal = personal
        self._schemas = schemas

    async def __call__(self, request: AppendRequest, principal: Principal) -> AppendResult:
        principal.require(Operation.APPEND, request.aggregate_type)
        request = record_principal(request, principal)
        if self._schemas is not None:
            # Before anything is written (cached schemas: no Cassandra read when steady).
            request = await self._schemas.stamp(request)
        expected = request.expected
        await self._register_type(request.aggregate_type)
        sealer = await self._sealer(request)
        # Exact and NO_STREAM appends go straight to the conditional write: one round trip.
        # ANY and STREAM_EXISTS first learn the current version, then write at it; losing a race
        # just means writing at the newer version (never a duplicate: event ids are unique).
        if expected.expectation is Expectation.EXACT:
            at = expected.version
        elif expected.expectation is Expectation.NO_STREAM:
            at = 0
        else:
            at = (await self._storage.stream_state(request.aggregate_id)).version
        if not expected.admits(at):
            raise WrongExpectedVersion(request.aggregate_id, expected, at)
        if self._publication is None:
            return await self._append(request, at, None, principal, sealer)
        # Announced before the commit (many appends share one journal write), so that no crash
        # after it can leave the events unpublished without a trace for the relay to find.
        seq = await self._publication.announce(
            request.aggregate_id, request.aggregate_type if at == 0 else None
        )
        try:
            result = await self._append(request, at, seq, principal, sealer)
        except (WrongExpectedVersion, InvalidArgument, EventIdReused, ContentionExhausted):
            self._publication.not_committed(seq)  # every attempt was refused: nothing written
            raise
        except BaseException:
            # Unknown outcome (Cassandra did not say, or the caller went away meanwhile).
            self._publication.outcome_unknown(seq)
            raise
        if result.already_committed:
            # Committed by an earlier attempt, whose own announcement covers its publication.
            self._publication.not_committed(seq)
        return result

    async def _register_type(self, aggregate_type: str) -> None:
        """Once per type and process: refuse a type whose Kafka topic another type has."""
        if self._catalog is None or aggregate_type in self._known_types:
            return
        clash = await self._catalog.register_type(aggregate_type, self._clock())
        if clash is not None:
            raise InvalidArgument.of(
                "aggregate_type",
                f"{aggregate_type!r} would share its Kafka topic with the existing aggregate "
                f"type {clash!r} (Kafka treats '.' and '_' in topic names alike); choose "
                "another name",
            )
        self._known_types.add(aggregate_type)

    async def _sealer(self, request: AppendRequest) -> Sealer | None:
        if self._personal is not None:
            return await self._personal.sealer(request)
        if any(SUBJECT_KEY in event.metadata for event in request.events):
            raise PersonalDataNotConfigured()  # never stored in the clear instead
        return None

    async def _append(
        self,
        request: AppendRequest,
        at: int,
        seq: int | None,
        principal: Principal,
        sealer: Sealer | None,
    ) -> AppendResult:
        expected = request.expected
        for attempt in range(1, self._max_attempts + 1):
            if not expected.admits(at):
                raise WrongExpectedVersion(request.aggregate_id, expected, at)
            now = self._clock()
            # Sealed for this very version: the seal binds it (a moved payload does not open).
            events = request.events if sealer is None else sealer(at)
            outcome = await self._storage.append(
                request.aggregate_id, request.aggregate_type, at, events, now
            )
            if isinstance(outcome, Committed):
                self._failpoints.hit("append.after_commit")
                if self._publication is not None:
                    self._publication.committed(_recorded(request, events, outcome), seq)
                return AppendResult(
                    first_version=outcome.first_version,
                    last_version=outcome.last_version,
                    committed_at=outcome.recorded_at,
                    event_ids=tuple(e.event_id for e in request.events),
                )
            # The type first: the principal may append to the request's type only, and an
            # aggregate of another type is none of its business, committed ids included.
            self._check_type(request, outcome, principal)
            if outcome.existing:
                return await self._already_committed(request, outcome.existing)
            if expected.expectation in (Expectation.EXACT, Expectation.NO_STREAM):
                if outcome.actual_version != at:
                    raise WrongExpectedVersion(
                        request.aggregate_id, expected, outcome.actual_version
                    )
                # Same version and type, no known id, yet refused: only a write whose unknown
                # outcome resolved as "not applied" ends here. Writing again is safe.
                continue
            at = outcome.actual_version
            # Spread contending writers out a little so they stop colliding in lockstep.
            await asyncio.sleep(random.uniform(0, 0.002 * min(attempt, 10)))
        raise ContentionExhausted(request.aggregate_id, self._max_attempts)

    @staticmethod
    def _check_type(request: AppendRequest, outcome: Rejected, principal: Principal) -> None:
        actual = outcome.actual_type
        if actual is not None and actual != request.aggregate_type:
            # Its type only to a principal that may see aggregates of that type anyway.
            which = repr(actual) if principal.sees(actual) else "another type"
            raise InvalidArgument.of(
                "aggregate_type",
                f"aggregate {request.aggregate_id!r} is of {which}, not {request.aggregate_type!r}",
            )

    async def _already_committed(
        self, request: AppendRequest, existing: Mapping[UUID, ExistingEvent]
    ) -> AppendResult:
        """A retry: answer the original result if the whole append was committed as sent."""
        ids = [event.event_id for event in request.events]
        found = [existing.get(event_id) for event_id in ids]
        first = found[0]
        if first is not None and all(
            e is not None and e.version == first.version + i for i, e in enumerate(found)
        ):
            # Only on this path, never on a normal append: one read of the events the ids name.
            stored = await self._storage.read(
                request.aggregate_id, first.version, Direction.FORWARDS, len(ids)
            )
            if self._personal is not None:
                stored = await self._personal.open(stored)
            for index, (sent, kept) in enumerate(zip(request.events, stored, strict=True)):
                if differs := _difference(sent, kept):
                    raise EventIdReused(request.aggregate_id, index, kept.version, differs)
            log.info(
                "idempotent retry answered with the original result",
                aggregate_id=request.aggregate_id,
                first_version=first.version,
            )
            return AppendResult(
                first_version=first.version,
                last_version=first.version + len(ids) - 1,
                committed_at=first.recorded_at,
                event_ids=tuple(ids),
                already_committed=True,
            )
        index = next(i for i, e in enumerate(found) if e is not None)
        committed = found[index]
        assert committed is not None
        raise InvalidArgument.of(
            f"events[{index}].event_id",
            f"was already committed as version {committed.version}, but this append is not "
            "the same as the one that committed it (a retry must resend exactly the same events "
            "with the same ids)",
        )


def _difference(sent: NewEvent, stored: RecordedEvent) -> str:
    """What a resent event has other than the stored one with its id ("": nothing). Who sends
    it does not count: a retry by another principal gets the original result; nor does the
    rest the server stamps (`$` keys: a retry is traced afresh, see domain/tracecontext.py)."""

    def client_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
        # Nor server keys: a retry naming "latest" after another version was registered
        # still sends the same event, whatever $schema_version it is stamped with now.
        return {k: v for k, v in metadata.items() if not k.startswith(RESERVED_METADATA_PREFIX)}

    if sent.event_type != stored.event_type:
        return "event_type"
    if sent.content_type != stored.content_type:
        return "content_type"
    if sent.data != stored.data:
        return "data"
    if client_metadata(sent.metadata) != client_metadata(stored.metadata):
        return "metadata"
    return ""


def _recorded(
    request: AppendRequest, events: Sequence[NewEvent], outcome: Committed
) -> list[RecordedEvent]:
    return [
        RecordedEvent(
            event_id=event.event_id,
            aggregate_id=request.aggregate_id,
            aggregate_type=request.aggregate_type,
            version=outcome.first_version + offset,
            event_type=event.event_type,
            data=event.data,
            content_type=event.content_type,
            metadata=event.metadata,
            recorded_at=outcome.recorded_at,
        )
        for offset, event in enumerate(events)
    ]
