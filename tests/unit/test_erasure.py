"""Personal data through the whole server, over the in-memory stores: appends seal, reads
open, EraseSubject shreds, and the other stores are cleaned as the receipt says."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from eventstore.client import ClientError, Event, EventStoreClient, PersonalDataError
from eventstore.config import PersonalDataSettings, ServerSettings
from eventstore.domain import personal
from eventstore.domain.access import ANY_TYPE, Operation, PermissionDenied, Principal
from eventstore.domain.events import Direction
from eventstore.domain.personal import MasterKey, MasterKeys, Personal, WrappedKey
from eventstore.server import Components, start
from eventstore.storage.memory import (
    InMemoryEventStorage,
    InMemorySnapshotStore,
    InMemorySubjectKeys,
)
from eventstore.usecases.personal import (
    OPEN_KEY_READS,
    EraseSubject,
    Keyring,
    PersonalData,
    rotate_master_key,
)
from replayer.examples import users
from replayer.personal import Resealer
from replayer.reducers import ReplayError, ReplayEvent
from tests.fakes import InMemoryEventIndex, InMemoryEventLog
from tests.unit.test_personal import new_event, recorded

SECRET = {"name": "Grace Hopper", "email": "grace@example.org"}
SUBJECT = {"data_subject": "person-42"}


class Stores:
    def __init__(self) -> None:
        self.storage = InMemoryEventStorage()
        self.index = InMemoryEventIndex()
        self.snapshots = InMemorySnapshotStore()
        self.keys = InMemorySubjectKeys()


@contextlib.asynccontextmanager
async def serving(stores: Stores, key_file: Path | None) -> AsyncIterator[EventStoreClient]:
    running = await start(
        ServerSettings(
            listen="127.0.0.1:0",
            auth_disabled=True,
            personal=PersonalDataSettings(master_key_file=key_file),
        ),
        Components(
            stores.storage,
            log=InMemoryEventLog(),
            index=stores.index,
            snapshots=stores.snapshots,
            subject_keys=stores.keys,
        ),
    )
    try:
        async with EventStoreClient(f"127.0.0.1:{running.port}") as client:
            yield client
    finally:
        await running.stop(grace=0)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "master.key"
    path.write_text(base64.b64encode(b"k" * 32).decode() + "\n")
    return path


async def test_sealed_at_rest_opened_for_readers_redacted_after_erasure(key_file: Path) -> None:
    stores = Stores()
    async with serving(stores, key_file) as client:
        await client.append("user-1", "User", [Event("Registered", SECRET, SUBJECT)])
        await client.append("user-1", "User", [Event("Renamed", {"plan": "gold"})])
        stored = await stores.storage.read("user-1", 1, Direction.FORWARDS, 10)
        assert b"Grace" not in stored[0].data
        assert stored[0].metadata[personal.SEALED_KEY]
        assert stored[1].data == b'{"plan":"gold"}'  # no subject named: stored as sent
        stores.index.add(stored)  # what the indexer would take from Kafka
        await client.save_snapshot("user-1", 2, b'{"name": "Grace Hopper"}', "UserState")

        read = [e async for e in client.read("user-1")]
        assert read[0].data == b'{"name":"Grace Hopper","email":"grace@example.org"}'
        assert dict(read[0].metadata) == SUBJECT
        queried = await client.query_all(aggregate_types=["User"])
        assert queried[0].data == read[0].data

        receipt = await client.erase_subject("person-42")
        assert receipt.key_destroyed
        done = {step.store: step.count for step in receipt.steps}
        assert done["cassandra.subject_keys"] == 1
        assert done["cassandra.snapshots"] == 1
        assert done["opensearch"] == 1
        assert await client.get_snapshot("user-1") is None
        audit = [e async for e in client.read("eventstore.erasures")]
        assert audit[-1].event_id == receipt.audit_event_id
        assert b"person-42" in audit[-1].data

        after = [e async for e in client.read("user-1")]
        assert after[0].data == b""
        assert after[0].metadata[personal.REDACTED_KEY] == "erased"
        assert after[1].data == b'{"plan":"gold"}'

        again = await client.erase_subject("person-42")
        assert not again.key_destroyed
        assert again.erased_at == receipt.erased_at
        with pytest.raises(PersonalDataError) as refused:
            await client.append("user-2", "User", [Event("Registered", SECRET, SUBJECT)])
        assert refused.value.reason == "SUBJECT_ERASED"


async def test_an_idempotent_retry_of_a_sealed_append(key_file: Path) -> None:
    async with serving(Stores(), key_file) as client:
        event = Event("Registered", SECRET, SUBJECT)
        first = await client.append("user-1", "User", [event])
        retried = await client.append("user-1", "User", [event])
        assert retried.first_version == first.first_version


async def test_without_a_master_key_personal_data_is_refused(tmp_path: Path) -> None:
    stores = Stores()
    async with serving(stores, None) as client:
        with pytest.raises(PersonalDataError) as refused:
            await client.append("user-1", "User", [Event("Registered", SECRET, SUBJECT)])
        assert refused.value.reason == "PERSONAL_DATA_NOT_CONFIGURED"
        assert "EVENTSTORE_MASTER_KEY_FILE" in str(refused.value)
        assert await stores.storage.describe("user-1") is None
        with pytest.raises(ClientError) as unserved:
            await client.erase_subject("person-42")
        assert unserved.value.code == grpc.StatusCode.UNIMPLEMENTED


async def test_erasure_needs_its_own_grant() -> None:
    keys = InMemorySubjectKeys()
    keyring = Keyring(keys, MasterKeys(MasterKey(b"k" * 32)))

    async def audit(*_: object) -> None:
        return None

    erase = EraseSubject(keyring, keys, audit)
    reader = Principal(
        "reader", {op: frozenset({ANY_TYPE}) for op in Operation if op is not Operation.ERASE}
    )
    with pytest.raises(PermissionDenied, match="may not erase data subjects"):
        await erase("person-1", reader)
    assert await keys.fetch("person-1") is None
    eraser = Principal("dpo", {Operation.ERASE: frozenset({ANY_TYPE})})
    assert (await erase("person-1", eraser)).key_destroyed


async def test_another_process_stops_opening_within_the_cache_ttl() -> None:
    """Two processes share the key store; one erases. The other's cached key lives on for at
    most its TTL (the stated bound), then its reads are redacted."""
    keys = InMemorySubjectKeys()
    masters = MasterKeys(MasterKey(b"k" * 32))
    now = [0.0]
    here = Keyring(keys, masters, ttl_s=10, clock=lambda: now[0])
    there = Keyring(keys, masters, ttl_s=10, clock=lambda: now[0])
    event = new_event(b"{}", data_subject="p")
    sealed = recorded(
        personal.seal_event(event, await there.for_sealing("p", "f"), Personal("p"), "user-1", 1)
    )
    opener = PersonalData(there, keys)
    assert (await opener.open([sealed]))[0].data == b"{}"

    async def audit(*_: object) -> None:
        return None

    eraser = Principal("dpo", {Operation.ERASE: frozenset({ANY_TYPE})})
    await EraseSubject(here, keys, audit)("p", eraser)
    now[0] = 9.9
    assert (await opener.open([sealed]))[0].data == b"{}"  # still cached: within the bound
    now[0] = 10.1
    assert (await opener.open([sealed]))[0].metadata[personal.REDACTED_KEY] == "erased"


async def test_a_rotation_rewraps_keys_and_leaves_events_alone(tmp_path: Path) -> None:
    old_file, new_file = tmp_path / "old.key", tmp_path / "new.key"
    old_file.write_text(base64.b64encode(b"o" * 32).decode())
    new_file.write_text(base64.b64encode(b"n" * 32).decode())
    stores = Stores()
    async with serving(stores, old_file) as client:
        await client.append("user-1", "User", [Event("Registered", SECRET, SUBJECT)])
        await client.append("user-2", "User", [Event("Registered", SECRET, {"data_subject": "x"})])
        await client.erase_subject("x")
    before = await stores.storage.read("user-1", 1, Direction.FORWARDS, 10)
    masters = PersonalDataSettings(
        master_key_file=new_file, previous_master_key_file=old_file
    ).master_keys()
    assert masters is not None
    done = await rotate_master_key(stores.keys, masters, datetime.now(UTC))
    assert (done.rewrapped, done.current, done.erased, done.skipped) == (1, 0, 1, 0)
    again = await rotate_master_key(stores.keys, masters, datetime.now(UTC))
    assert (again.rewrapped, again.current) == (0, 1)
    assert await stores.storage.read("user-1", 1, Direction.FORWARDS, 10) == before
    async with serving(stores, new_file) as client:  # the old key is gone from the server
        read = [e async for e in client.read("user-1")]
        assert b"Grace Hopper" in read[0].data


async def test_republish_seals_again_what_the_server_opened() -> None:
    keys = InMemorySubjectKeys()
    keyring = Keyring(keys, MasterKeys(MasterKey(b"k" * 32)))
    key = await keyring.for_sealing("p", "f")
    opened = recorded(new_event(b'{"name": "Ada"}', data_subject="p"), "user-1", 4)
    sealed = await Resealer(keyring)(opened)
    assert b"Ada" not in sealed.data
    assert personal.open_event(sealed, key).data == opened.data  # bound to user-1@4 as stored
    plain = recorded(new_event(b"{}"), "user-1", 5)
    assert await Resealer(None)(plain) is plain
    with pytest.raises(ReplayError, match="EVENTSTORE_MASTER_KEY_FILE"):
        await Resealer(None)(opened)
    await keys.destroy("p", datetime.now(UTC))
    keyring.forget("p")
    erased = await Resealer(keyring)(opened)
    assert (erased.data, erased.metadata[personal.REDACTED_KEY]) == (b"", "erased")
    replayed = ReplayEvent.of(erased)
    assert replayed.redacted
    assert replayed.data is None
    assert users.reduce({"userId": 1, "name": "Ada"}, replayed) == {"userId": 1, "name": None}


async def test_snapshots_of_an_aggregate_with_personal_data_are_sealed(key_file: Path) -> None:
    stores = Stores()
    async with serving(stores, key_file) as client:
        await client.append("user-1", "User", [Event("Registered", SECRET, SUBJECT)])
        await client.append("user-1", "User", [Event("Met", {}, {"data_subject": "person-43"})])
        await client.append("plain-1", "User", [Event("Registered", {"name": "x"})])
        await client.save_snapshot("user-1", 2, b'{"name": "Grace Hopper"}', "UserState")
        await client.save_snapshot("plain-1", 1, b'{"name": "x"}', "UserState")
        stored = await stores.snapshots.latest("user-1", None)
        assert stored is not None
        assert b"Grace" not in stored.state
        assert stored.state_type == "$sealed:2:UserState"  # one layer per subject
        assert (await stores.snapshots.latest("plain-1", None) or stored).state == b'{"name": "x"}'
        got = await client.get_snapshot("user-1")
        assert got is not None
        assert (got.state, got.state_type) == (b'{"name": "Grace Hopper"}', "UserState")
        # Erasing either subject deletes it; a snapshot saved after skips the erased subject.
        await client.erase_subject("person-43")
        assert await client.get_snapshot("user-1") is None
        await client.save_snapshot("user-1", 2, b'{"name": "Grace Hopper"}', "UserState")
        stored = await stores.snapshots.latest("user-1", None)
        assert stored is not None
        assert stored.state_type == "$sealed:1:UserState"
        assert (await client.get_snapshot("user-1") or stored).state_type == "UserState"


async def test_a_page_about_many_people_reads_their_keys_side_by_side() -> None:
    class Slow(InMemorySubjectKeys):
        in_flight = 0
        most = 0

        async def fetch(self, subject: str) -> WrappedKey | None:
            Slow.in_flight += 1
            Slow.most = max(Slow.most, Slow.in_flight)
            await asyncio.sleep(0.01)
            Slow.in_flight -= 1
            return await super().fetch(subject)

    keys = Slow()
    sealing = Keyring(keys, MasterKeys(MasterKey(b"k" * 32)))
    events = []
    for i in range(40):
        subject = f"person-{i}"
        key = await sealing.for_sealing(subject, "f")
        event = new_event(b"{}", data_subject=subject)
        events.append(
            recorded(personal.seal_event(event, key, Personal(subject), "a", i + 1), "a", i + 1)
        )
    Slow.most = 0
    opener = PersonalData(Keyring(keys, MasterKeys(MasterKey(b"k" * 32))), keys)
    opened = await opener.open(events)
    assert [e.data for e in opened] == [b"{}"] * 40
    assert 1 < Slow.most <= OPEN_KEY_READS
