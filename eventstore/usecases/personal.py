"""Personal data: seal events about a data subject on append, open them for readers, and
erase a subject (crypto-shredding). The rules are in domain/personal.py."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import structlog

from eventstore.domain import personal
from eventstore.domain.access import ANY_TYPE, Operation, Principal
from eventstore.domain.events import AppendRequest, ExpectedVersion, NewEvent, RecordedEvent
from eventstore.domain.personal import (
    ErasureReceipt,
    ErasureStep,
    MasterKeys,
    PersonalDataNotConfigured,
    SubjectErased,
    SubjectKey,
)
from eventstore.domain.snapshots import Snapshot
from eventstore.ports import EventIndex, SnapshotStore, SubjectKeys
from eventstore.usecases.append import utc_now_ms

log = structlog.get_logger(__name__)

#: The aggregate every erasure is recorded in (its own type: grant `read` on it to auditors).
AUDIT_TYPE = "eventstore.audit"
AUDIT_AGGREGATE = "eventstore.erasures"
AUDIT_EVENT_TYPE = "SubjectErased"

_ERASED = object()
#: Subject keys one `PersonalData.open` reads from the store at a time.
OPEN_KEY_READS = 16


class Keyring:
    """The subject keys this process uses, unwrapped, each kept at most `ttl_s`.

    The TTL bounds how long another server process may still open a subject's events after an
    erasure (the process that erases drops its copy at once); it also bounds the key reads
    to one per subject and TTL per process. A subject's first append anywhere adds one
    conditional write (IF NOT EXISTS) that creates its key.
    """

    def __init__(
        self,
        keys: SubjectKeys,
        master: MasterKeys | None,
        ttl_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] | None = None,
        max_entries: int = 100_000,
    ) -> None:
        self._keys = keys
        self._master = master
        self._ttl_s = ttl_s
        self._clock = clock
        self._now = now or utc_now_ms
        self._max_entries = max_entries
        #: subject -> (expires at, its key or _ERASED or None: never had one)
        self._cache: dict[str, tuple[float, object]] = {}

    def _cached(self, subject: str) -> object:
        hit = self._cache.get(subject)
        if hit is None or hit[0] < self._clock():
            return None
        return hit[1]

    def _keep(self, subject: str, value: object) -> None:
        if len(self._cache) >= self._max_entries:
            # Oldest first (insertion order): the cache only saves reads.
            for stale in list(self._cache)[: self._max_entries // 10 or 1]:
                del self._cache[stale]
        self._cache.pop(subject, None)
        self._cache[subject] = (self._clock() + self._ttl_s, value)

    def forget(self, subject: str) -> None:
        self._cache.pop(subject, None)

    async def for_sealing(self, subject: str, field: str) -> SubjectKey:
        """The subject's key, created if it has none; SubjectErased once erased."""
        if self._master is None:
            raise PersonalDataNotConfigured()
        cached = self._cached(subject)
        if isinstance(cached, SubjectKey):
            return cached
        if cached is _ERASED:
            raise SubjectErased(subject, field)
        stored = await self._keys.fetch(subject)
        if stored is None:
            fresh = SubjectKey.generate(subject)
            stored = await self._keys.create(self._master.current.wrap(fresh, self._now()))
            log.debug("data subject key created", key_id=str(stored.key_id))
        if stored.erased:
            self._keep(subject, _ERASED)
            raise SubjectErased(subject, field)
        key = self._master.unwrap(stored)
        self._keep(subject, key)
        return key

    async def for_opening(self, subject: str) -> SubjectKey | None:
        """The subject's key; None once erased (or if it never had one)."""
        if self._master is None:
            raise PersonalDataNotConfigured()
        cached = self._cached(subject)
        if isinstance(cached, SubjectKey):
            return cached
        if cached is _ERASED:
            return None
        stored = await self._keys.fetch(subject)
        if stored is None or stored.erased:
            self._keep(subject, _ERASED)
            return None
        key = self._master.unwrap(stored)
        self._keep(subject, key)
        return key


class PersonalData:
    """Seals what appends declare personal and opens it for readers."""

    def __init__(self, keyring: Keyring, keys: SubjectKeys, max_tracked: int = 100_000) -> None:
        self._keyring = keyring
        self._keys = keys
        self._max_tracked = max_tracked
        #: (subject, aggregate) pairs this process recorded already
        self._tracked: set[tuple[str, str]] = set()

    async def sealer(self, request: AppendRequest) -> Callable[[int], tuple[NewEvent, ...]] | None:
        """What seals the request's events for an append at version `at` (None: nothing in
        it is personal). Every key is fetched (or created) here, before anything is written,
        and each subject's aggregate is recorded for erasure."""
        declared = [personal.personal_of(event.metadata) for event in request.events]
        if not any(declared):
            return None
        keys: dict[str, SubjectKey] = {}
        for index, about in enumerate(declared):
            if about is not None and about.subject not in keys:
                field = f"events[{index}].metadata[{personal.SUBJECT_KEY}]"
                keys[about.subject] = await self._keyring.for_sealing(about.subject, field)
                await self._track(about.subject, request.aggregate_id)

        def seal(at: int) -> tuple[NewEvent, ...]:
            return tuple(
                event
                if about is None
                else personal.seal_event(
                    event, keys[about.subject], about, request.aggregate_id, at + 1 + offset
                )
                for offset, (event, about) in enumerate(zip(request.events, declared, strict=True))
            )

        return seal

    async def _track(self, subject: str, aggregate_id: str) -> None:
        pair = (subject, aggregate_id)
        if pair in self._tracked:
            return
        await self._keys.add_aggregate(subject, aggregate_id)
        if len(self._tracked) >= self._max_tracked:
            self._tracked.clear()
        self._tracked.add(pair)

    async def seal_snapshot(self, snapshot: Snapshot) -> Snapshot:
        """Sealed for every subject the aggregate's events name (as is when none): a snapshot
        is derived from them, so it may hold their personal data."""
        keys = []
        for subject in sorted(await self._keys.subjects(snapshot.aggregate_id)):
            # An erased subject's events read redacted: a state rebuilt from them holds
            # nothing of it (one rebuilt before the erasure and saved after would: a race
            # the README names).
            if (key := await self._keyring.for_opening(subject)) is not None:
                keys.append(key)
        return personal.seal_snapshot(snapshot, keys) if keys else snapshot

    async def open_snapshot(self, snapshot: Snapshot) -> Snapshot | None:
        """The snapshot as saved; None once one of its subjects is erased (erasure deletes
        such snapshots: this only answers a read that raced with it)."""
        while (subject := personal.sealed_snapshot_subject(snapshot)) is not None:
            key = await self._keyring.for_opening(subject)
            if key is None:
                return None
            snapshot = personal.open_snapshot_layer(snapshot, key)
        return snapshot

    async def open(self, events: Sequence[RecordedEvent]) -> list[RecordedEvent]:
        """The events as their writers sent them; those of erased subjects redacted."""
        subjects = {s for event in events if (s := personal.sealed_subject(event)) is not None}
        if not subjects:
            return list(events)
        # A page of events about many people, none cached: their keys are read side by side
        # (a few at a time), not one round trip after another.
        slots = asyncio.Semaphore(OPEN_KEY_READS)

        async def key_of(subject: str) -> SubjectKey | None:
            async with slots:
                return await self._keyring.for_opening(subject)

        ordered = sorted(subjects)
        keys = dict(zip(ordered, await asyncio.gather(*map(key_of, ordered)), strict=True))
        return [
            event
            if (subject := personal.sealed_subject(event)) is None
            else personal.open_event(event, keys[subject])
            for event in events
        ]


class EraseSubject:
    """Destroy a subject's key, drop what holds its data in the clear, record it, answer a
    receipt. Idempotent: erasing again answers a receipt saying the key was gone already."""

    def __init__(
        self,
        keyring: Keyring,
        keys: SubjectKeys,
        audit: Callable[[AppendRequest, Principal], Awaitable[object]],
        snapshots: SnapshotStore | None = None,
        index: EventIndex | None = None,
        now: Callable[[], datetime] | None = None,
        cache_ttl_s: float = 10.0,
    ) -> None:
        self._keyring = keyring
        self._keys = keys
        self._audit = audit
        self._snapshots = snapshots
        self._index = index
        self._now = now or utc_now_ms
        self._cache_ttl_s = cache_ttl_s

    async def __call__(self, subject: str, principal: Principal) -> ErasureReceipt:
        principal.require(Operation.ERASE, ANY_TYPE)
        at = self._now()
        record = await self._keys.destroy(subject, at)
        destroyed = record.erased_at == at
        self._keyring.forget(subject)
        log.warning("data subject erased", key_destroyed=destroyed)
        aggregates = await self._keys.aggregates(subject)
        steps = [
            ErasureStep(
                "cassandra.subject_keys",
                "key destroyed" if destroyed else "key already destroyed",
                int(destroyed),
            ),
            ErasureStep(
                "cassandra.events", "aggregates left sealed, now unreadable", len(aggregates)
            ),
            ErasureStep(
                "kafka", "records left sealed, now unreadable (aggregates)", len(aggregates)
            ),
        ]
        if self._snapshots is not None:
            deleted = 0
            for aggregate_id in aggregates:
                deleted += await self._snapshots.delete(aggregate_id)
            steps.append(ErasureStep("cassandra.snapshots", "snapshots deleted", deleted))
        if self._index is not None:
            documents = await self._index.erase_subject(subject)
            steps.append(ErasureStep("opensearch", "documents deleted", documents))
        steps.append(
            ErasureStep(
                "server caches",
                f"key dropped here; other processes drop it within {self._cache_ttl_s:g} s",
                0,
            )
        )
        erased_at = record.erased_at or at
        event_id = uuid.uuid4()
        data = {
            "subject": subject,
            "erased_by": principal.name,
            "erased_at": erased_at.isoformat(),
            "key_destroyed": destroyed,
            "steps": [{"store": s.store, "action": s.action, "count": s.count} for s in steps],
        }
        request = AppendRequest(
            AUDIT_AGGREGATE,
            AUDIT_TYPE,
            ExpectedVersion.any(),
            (NewEvent(event_id, AUDIT_EVENT_TYPE, json.dumps(data).encode(), "application/json"),),
        )
        # Recorded under the caller's name, by a principal that may append audit events only.
        recorder = replace(principal, grants={Operation.APPEND: frozenset({AUDIT_TYPE})})
        await self._audit(request, recorder)
        return ErasureReceipt(subject, destroyed, erased_at, tuple(steps), event_id)


@dataclass(frozen=True, slots=True)
class Rotation:
    """What a master key rotation did."""

    rewrapped: int
    #: already under the current master key
    current: int
    erased: int
    #: changed by someone else meanwhile (erased during the rotation): left as they were
    skipped: int


async def rotate_master_key(keys: SubjectKeys, masters: MasterKeys, at: datetime) -> Rotation:
    """Re-wrap every subject key under the current master key. Events are not touched: their
    seals name the subject key, which stays the same; only its wrapping changes."""
    rewrapped = current = erased = skipped = 0
    for stored in await keys.keys():
        if stored.erased:
            erased += 1
        elif stored.master_key_id == masters.current.key_id:
            current += 1
        else:
            new = masters.current.wrap(masters.unwrap(stored), stored.created_at)
            if await keys.rewrap(stored, new):
                rewrapped += 1
            else:
                skipped += 1
    log.info("master key rotated", rewrapped=rewrapped, erased=erased, skipped=skipped, at=str(at))
    return Rotation(rewrapped, current, erased, skipped)
