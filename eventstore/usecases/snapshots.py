"""Save and fetch snapshots. A snapshot must name a version the aggregate really has."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from eventstore.domain.access import Operation, Principal
from eventstore.domain.errors import InvalidArgument, SnapshotNotFound
from eventstore.domain.snapshots import Snapshot
from eventstore.ports import EventStorage, SnapshotStore
from eventstore.usecases.append import utc_now_ms

if TYPE_CHECKING:
    from eventstore.usecases.personal import PersonalData


class SaveSnapshot:
    def __init__(
        self,
        storage: EventStorage,
        snapshots: SnapshotStore,
        clock: Callable[[], datetime] = utc_now_ms,
        personal: PersonalData | None = None,
    ) -> None:
        self._storage = storage
        self._snapshots = snapshots
        self._clock = clock
        self._personal = personal

    async def __call__(
        self,
        aggregate_id: str,
        version: int,
        state: bytes,
        state_type: str,
        schema_version: int,
        principal: Principal,
    ) -> Snapshot:
        info = await self._storage.describe(aggregate_id)
        absent = InvalidArgument.of(
            "version", f"aggregate {aggregate_id!r} has no events, so no version {version}"
        )
        if info is None:
            raise absent
        # Others rebuild state from snapshots: writing one is as strong as appending.
        principal.require_existing(Operation.APPEND, info.aggregate_type, absent)
        if version > info.version:
            raise InvalidArgument.of(
                "version",
                f"aggregate {aggregate_id!r} has no version {version} (it is at {info.version})",
            )
        snapshot = Snapshot(aggregate_id, version, state, state_type, schema_version, self._clock())
        if self._personal is not None:
            await self._snapshots.save(await self._personal.seal_snapshot(snapshot))
        else:
            await self._snapshots.save(snapshot)
        return snapshot


class GetSnapshot:
    def __init__(
        self,
        storage: EventStorage,
        snapshots: SnapshotStore,
        personal: PersonalData | None = None,
    ) -> None:
        self._storage = storage
        self._snapshots = snapshots
        self._personal = personal

    async def __call__(
        self, aggregate_id: str, max_version: int | None, principal: Principal
    ) -> Snapshot:
        if principal.permitted(Operation.READ) is not None:
            # Snapshots do not carry the aggregate's type; the aggregate does (one more read,
            # only for principals limited to some types).
            info = await self._storage.describe(aggregate_id)
            if info is not None:
                principal.require_existing(
                    Operation.READ, info.aggregate_type, SnapshotNotFound(aggregate_id, max_version)
                )
        snapshot = await self._snapshots.latest(aggregate_id, max_version)
        if snapshot is not None and self._personal is not None:
            snapshot = await self._personal.open_snapshot(snapshot)
        if snapshot is None:
            raise SnapshotNotFound(aggregate_id, max_version)
        return snapshot
