"""Event schemas: registering versions, validating appended data, upcasting what is read.

Versions never change once registered, so the server caches them; only the end of an event
type's list can be stale, for at most `refresh_s` (a version registered through another
replica), and it is read again at once when an append names a version beyond it. In the
steady state validating an append or upcasting a read costs no Cassandra round trip.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import structlog

from eventstore.domain.access import Operation, Principal
from eventstore.domain.errors import FieldViolation, InvalidArgument
from eventstore.domain.events import SCHEMA_VERSION_KEY, AppendRequest, RecordedEvent
from eventstore.domain.schemas import (
    Compatibility,
    CompiledSchema,
    SchemaFormat,
    SchemaHistory,
    SchemaIncompatible,
    SchemaLimits,
    SchemaNotFound,
    SchemaRegistration,
    SchemaVersion,
    SchemaVersionConflict,
    UpcastFailed,
    UpcastOp,
    check_registration,
    compatibility_problems,
    upcast,
)
from eventstore.domain.validation import is_json_content_type
from eventstore.ports import SchemaRegistry

log = structlog.get_logger(__name__)

#: Registrations that lose a race for the next version re-check against the winner this often.
_REGISTER_ATTEMPTS = 5
#: A version an append names beyond the cached list is looked up at most this often per type
#: (bounds what appends naming versions that do not exist can cost Cassandra).
_MISS_RELOAD_S = 0.1


@dataclass(slots=True)
class _Entry:
    history: SchemaHistory
    loaded_at: float


class SchemaCatalog:
    """The cached schema histories, for the append path and every read path."""

    def __init__(
        self,
        registry: SchemaRegistry,
        refresh_s: float = 5.0,
        max_event_bytes: int = 1024 * 1024,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._refresh_s = refresh_s
        self._max_event_bytes = max_event_bytes
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[SchemaHistory]] = {}
        #: bumped by `forget`, so that a read begun before a registration is not cached
        self._generations: dict[tuple[str, str], int] = {}

    async def history(
        self, aggregate_type: str, event_type: str, at_least: int = 0
    ) -> SchemaHistory:
        """The event type's versions (cached), read again when older than `refresh_s` or when
        `at_least` is beyond the cached ones."""
        key = (aggregate_type, event_type)
        entry = self._entries.get(key)
        now = self._clock()
        if entry is not None:
            age = now - entry.loaded_at
            if age < self._refresh_s and (at_least <= entry.history.latest or age < _MISS_RELOAD_S):
                return entry.history
        loading = self._loading.get(key)
        if loading is None:
            # One read per type however many calls want it at once, in a task of its own: a
            # caller that goes away does not cancel the read the others wait for.
            loading = asyncio.ensure_future(self._load(key, entry))
            self._loading[key] = loading
            loading.add_done_callback(lambda done: self._loaded(key, done))
        return await asyncio.shield(loading)

    def _loaded(self, key: tuple[str, str], done: asyncio.Future[SchemaHistory]) -> None:
        if self._loading.get(key) is done:
            del self._loading[key]
        if not done.cancelled():
            done.exception()  # retrieved: its waiters (if any are left) got it

    async def _load(self, key: tuple[str, str], entry: _Entry | None) -> SchemaHistory:
        generation = self._generations.get(key, 0)
        versions = await self._registry.versions(*key)
        history = _history(versions, entry.history if entry is not None else None)
        if self._generations.get(key, 0) != generation:
            return history  # a registration here meanwhile: the next call reads again
        if key not in self._entries and len(self._entries) >= self._max_entries:
            # Oldest first (dicts keep insertion order): an entry is only a cache.
            del self._entries[next(iter(self._entries))]
        self._entries[key] = _Entry(history, self._clock())
        return history

    def forget(self, aggregate_type: str, event_type: str) -> None:
        """A version was registered here: read the list again on next use."""
        key = (aggregate_type, event_type)
        self._entries.pop(key, None)
        self._generations[key] = self._generations.get(key, 0) + 1
        self._loading.pop(key, None)

    async def stamp(self, request: AppendRequest) -> AppendRequest:
        """Validate each event of a type with schemas against the version it names (0: the
        latest) and record that version in its metadata. Types without schemas pass as they
        are. Raises InvalidArgument naming each event, and the JSON path, that failed."""
        violations: list[FieldViolation] = []
        events = list(request.events)
        for index, event in enumerate(request.events):
            history = await self.history(
                request.aggregate_type, event.event_type, event.schema_version
            )
            path = f"events[{index}]"
            if not history.versions:
                if event.schema_version:
                    violations.append(
                        FieldViolation(
                            f"{path}.schema_version",
                            f"{request.aggregate_type}/{event.event_type} has no schema",
                        )
                    )
                continue
            target = event.schema_version or history.latest
            compiled = history.compiled.get(target)
            if compiled is None:
                violations.append(
                    FieldViolation(
                        f"{path}.schema_version",
                        f"{request.aggregate_type}/{event.event_type} has versions 1 to "
                        f"{history.latest}",
                    )
                )
                continue
            is_json = is_json_content_type(event.content_type)
            if is_json != (compiled.version.format is SchemaFormat.JSON_SCHEMA):
                violations.append(
                    FieldViolation(
                        f"{path}.content_type",
                        f"version {target} of the schema is {compiled.version.format.value}",
                    )
                )
                continue
            problems = compiled.problems(event.data)
            if problems:
                violations.append(
                    FieldViolation(
                        f"{path}.data",
                        f"does not match schema version {target}: " + "; ".join(problems),
                    )
                )
                continue
            events[index] = replace(
                event, metadata={**event.metadata, SCHEMA_VERSION_KEY: str(target)}
            )
        if violations:
            raise InvalidArgument(violations)
        return replace(request, events=tuple(events))

    async def personal_fields(
        self, aggregate_type: str, event_type: str, version: int = 0
    ) -> list[tuple[str, ...]]:
        """The paths a version (0: the latest) marks `"x-personal": true` ([] for a type
        without schemas): for per-subject encryption of personal data."""
        history = await self.history(aggregate_type, event_type, version)
        compiled = history.compiled.get(version or history.latest)
        return list(compiled.personal) if compiled is not None else []

    async def latest(self, events: Iterable[RecordedEvent]) -> list[RecordedEvent]:
        """`events` with the data of every type with schemas upcast to its latest version."""
        return [await self.upcast_event(event) for event in events]

    async def upcast_event(self, event: RecordedEvent) -> RecordedEvent:
        history = await self.history(event.aggregate_type, event.event_type)
        if not history.versions:
            return event
        text = event.metadata.get(SCHEMA_VERSION_KEY, "1")
        stored = int(text) if text.isdigit() and len(text) <= 9 else 1
        if stored >= history.latest:
            return event
        ops = history.ops_between(stored, history.latest)
        data = event.data
        if ops:
            data_or_none = self._upcast_data(event, ops)
            if data_or_none is None:
                return event  # delivered as stored, with the version it has
            data = data_or_none
        return replace(
            event, data=data, metadata={**event.metadata, SCHEMA_VERSION_KEY: str(history.latest)}
        )

    def _upcast_data(self, event: RecordedEvent, ops: Sequence[UpcastOp]) -> bytes | None:
        if not is_json_content_type(event.content_type):
            return None
        try:
            result = json.dumps(
                upcast(json.loads(event.data), ops), separators=(",", ":"), ensure_ascii=False
            ).encode()
        except (UpcastFailed, ValueError, RecursionError) as exc:
            log.warning(
                "event delivered as stored: its upcast failed",
                aggregate_id=event.aggregate_id,
                version=event.version,
                error=str(exc),
            )
            return None
        if len(result) > self._max_event_bytes:
            # What the store accepted must stay deliverable (invariant 11): never larger
            # than an event may be.
            log.warning(
                "event delivered as stored: upcast it would exceed the event size limit",
                aggregate_id=event.aggregate_id,
                version=event.version,
            )
            return None
        return result


def _history(versions: Sequence[SchemaVersion], previous: SchemaHistory | None) -> SchemaHistory:
    """Compiled once per version: versions never change, so earlier compilations are reused."""
    known = previous.compiled if previous is not None else {}
    compiled = {
        v.version: known[v.version] if v.version in known else CompiledSchema(v) for v in versions
    }
    return SchemaHistory(tuple(versions), compiled)


@dataclass(frozen=True, slots=True)
class Registered:
    schema: SchemaVersion
    already_registered: bool = False


class Schemas:
    """RegisterSchema, ListSchemas, GetSchema."""

    def __init__(
        self,
        registry: SchemaRegistry,
        catalog: SchemaCatalog,
        limits: SchemaLimits,
        clock: Callable[[], datetime],
    ) -> None:
        self._registry = registry
        self.catalog = catalog
        self.limits = limits
        self._clock = clock

    async def register(self, request: SchemaRegistration, principal: Principal) -> Registered:
        principal.require(Operation.REGISTER_SCHEMA, request.aggregate_type)
        versions: list[SchemaVersion] = []
        for _ in range(_REGISTER_ATTEMPTS):
            versions = await self._registry.versions(request.aggregate_type, request.event_type)
            previous = versions[-1] if versions else None
            candidate = SchemaVersion(
                aggregate_type=request.aggregate_type,
                event_type=request.event_type,
                version=len(versions) + 1,
                format=request.format,
                document=request.document,
                compatibility=request.compatibility
                or (previous.compatibility if previous else Compatibility.BACKWARD),
                message_name=request.message_name,
                upcast=request.upcast,
                registered_at=self._clock(),
                registered_by=principal.name,
            )
            check_registration(candidate, self.limits)
            if previous is not None and _same_content(previous, candidate):
                return Registered(previous, already_registered=True)
            if request.version and request.version != candidate.version:
                raise SchemaVersionConflict(
                    request.aggregate_type, request.event_type, request.version, len(versions)
                )
            if previous is None and candidate.upcast:
                raise InvalidArgument.of("upcast_json", "version 1 has nothing to upcast from")
            if len(versions) >= self.limits.max_versions:
                raise InvalidArgument.of(
                    "event_type",
                    f"has {len(versions)} schema versions, the most one type may have",
                )
            if previous is not None:
                problems = compatibility_problems(previous, candidate)
                if problems:
                    raise SchemaIncompatible(
                        request.aggregate_type,
                        request.event_type,
                        candidate.compatibility,
                        problems,
                    )
            if await self._registry.add(candidate):
                self.catalog.forget(request.aggregate_type, request.event_type)
                log.info(
                    "schema registered",
                    aggregate_type=request.aggregate_type,
                    event_type=request.event_type,
                    version=candidate.version,
                )
                return Registered(candidate)
            # Another registration took this version meanwhile: judge against it.
        raise SchemaVersionConflict(
            request.aggregate_type, request.event_type, len(versions) + 1, len(versions)
        )

    async def list(
        self, aggregate_type: str, event_type: str, principal: Principal
    ) -> list[SchemaVersion]:
        principal.require(Operation.READ, aggregate_type)
        event_types = (
            [event_type] if event_type else await self._registry.event_types(aggregate_type)
        )
        found: list[SchemaVersion] = []
        for name in event_types:
            found.extend(await self._registry.versions(aggregate_type, name))
        return found

    async def get(
        self, aggregate_type: str, event_type: str, version: int, principal: Principal
    ) -> SchemaVersion:
        principal.require(Operation.READ, aggregate_type)
        versions = await self._registry.versions(aggregate_type, event_type)
        found = versions[-1:] if not version else [v for v in versions if v.version == version]
        if not found:
            raise SchemaNotFound(aggregate_type, event_type, version or None)
        return found[0]


def _same_content(previous: SchemaVersion, candidate: SchemaVersion) -> bool:
    return (
        previous.format is candidate.format
        and previous.document == candidate.document
        and previous.message_name == candidate.message_name
        and previous.upcast == candidate.upcast
        and previous.compatibility is candidate.compatibility
    )
