"""The rules of sealing personal data (domain/personal.py): no service needed."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from eventstore.domain import personal
from eventstore.domain.errors import InvalidArgument
from eventstore.domain.events import ExpectedVersion, NewEvent, RecordedEvent
from eventstore.domain.personal import (
    MasterKey,
    MasterKeyMissing,
    MasterKeys,
    Personal,
    SealBroken,
    SubjectKey,
)
from eventstore.domain.validation import Limits, RawAppend, RawEvent, validate_append

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SECRET = b'{"name": "Ada Lovelace", "email": "ada@example.org", "plan": "gold"}'


def new_event(data: bytes = SECRET, **metadata: str) -> NewEvent:
    return NewEvent(uuid.uuid4(), "UserRegistered", data, "application/json", metadata)


def recorded(event: NewEvent, aggregate_id: str = "user-1", version: int = 1) -> RecordedEvent:
    return RecordedEvent(
        event.event_id,
        aggregate_id,
        "User",
        version,
        event.event_type,
        event.data,
        event.content_type,
        event.metadata,
        T0,
    )


KEY = SubjectKey.generate("person-7")


def test_the_whole_payload_is_sealed_and_opens_again() -> None:
    event = new_event(data_subject="person-7")
    sealed = personal.seal_event(event, KEY, Personal("person-7"), "user-1", 1)
    assert b"Ada" not in sealed.data
    assert b"ada@" not in sealed.data
    assert sealed.metadata[personal.SEALED_KEY] == KEY.key_id.hex
    envelope = personal.parse_envelope(sealed.data)
    assert (envelope.subject, envelope.key_id) == ("person-7", KEY.key_id)
    opened = personal.open_event(recorded(sealed), KEY)
    assert opened.data == SECRET
    assert dict(opened.metadata) == {"data_subject": "person-7"}
    # A search document that left its payload out: nothing to open, no failure.
    assert personal.open_event(recorded(replace(sealed, data=b"")), KEY).data == b""


def test_a_sealed_payload_moved_elsewhere_does_not_open() -> None:
    sealed = recorded(personal.seal_event(new_event(), KEY, Personal("person-7"), "user-1", 1))
    for moved in (
        replace(sealed, version=2),
        replace(sealed, aggregate_id="user-2"),
        replace(sealed, event_id=uuid.uuid4()),
        replace(sealed, data=sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])),
    ):
        with pytest.raises(SealBroken):
            personal.open_event(moved, KEY)


def test_erased_reads_redacted_never_fail() -> None:
    sealed = recorded(
        personal.seal_event(new_event(data_subject="p"), KEY, Personal("p"), "user-1", 1)
    )
    for key in (None, SubjectKey.generate("p")):  # erased, or erased and the id reused
        redacted = personal.open_event(sealed, key)
        assert redacted.data == b""
        assert redacted.metadata[personal.REDACTED_KEY] == personal.REDACTED_VALUE
        assert personal.SEALED_KEY not in redacted.metadata


def test_only_the_personal_fields_are_sealed() -> None:
    data = b'{"email": "ada@example.org", "address": {"street": "1 Lane", "city": "London"}}'
    about = Personal("p", ("email", "address.street", "missing.field"))
    sealed = personal.seal_event(new_event(data), KEY, about, "user-1", 3)
    assert b"ada@" not in sealed.data
    assert b"1 Lane" not in sealed.data
    document = json.loads(sealed.data)
    assert document["address"]["city"] == "London"  # not personal: readable, searchable
    assert sealed.metadata[personal.SEALED_FIELDS_KEY] == "email,address.street"
    opened = personal.open_event(recorded(sealed, version=3), KEY)
    assert json.loads(opened.data) == json.loads(data)
    redacted = personal.open_event(recorded(sealed, version=3), None)
    assert json.loads(redacted.data) == {
        "email": None,
        "address": {"street": None, "city": "London"},
    }
    # A sealed field is bound to its path: swapping two does not open.
    swapped = json.loads(sealed.data)
    swapped["email"], swapped["address"]["street"] = swapped["address"]["street"], swapped["email"]
    with pytest.raises(SealBroken):
        personal.open_event(
            recorded(replace(sealed, data=json.dumps(swapped).encode()), version=3), KEY
        )


def test_master_keys_wrap_and_rotate() -> None:
    old, new = MasterKey(b"a" * 32), MasterKey(b"b" * 32)
    assert old.key_id != new.key_id
    assert old.key_id.startswith("mk-")
    wrapped = old.wrap(KEY, T0)
    assert KEY.key not in (wrapped.wrapped or b"")
    assert MasterKeys(new, [old]).unwrap(wrapped).key == KEY.key
    with pytest.raises(MasterKeyMissing):
        MasterKeys(new).unwrap(wrapped)
    with pytest.raises(SealBroken):  # a wrapped key given to another subject does not unwrap
        old.unwrap(replace(wrapped, subject="someone-else"))
    text = base64.b64encode(b"c" * 32).decode()
    assert MasterKey.from_text(text + "\n").key_id == MasterKey(b"c" * 32).key_id
    with pytest.raises(ValueError, match="32 bytes"):
        MasterKey.from_text(base64.b64encode(b"short").decode())


def _append(*events: RawEvent, limits: Limits | None = None) -> None:
    limits = limits or Limits()
    validate_append(RawAppend("user-1", "User", ExpectedVersion.any(), list(events)), limits)


def raw(data: bytes = SECRET, **metadata: str) -> RawEvent:
    return RawEvent(event_id="", event_type="E", data=data, content_type="", metadata=metadata)


@pytest.mark.parametrize(
    ("metadata", "data", "field"),
    [
        ({"data_subject": ""}, SECRET, "events[0].metadata[data_subject]"),
        ({"data_subject": "a\nb"}, SECRET, "events[0].metadata[data_subject]"),
        ({"personal_fields": "email"}, SECRET, "events[0].metadata[personal_fields]"),
        (
            {"data_subject": "p", "personal_fields": "a,,b"},
            SECRET,
            "events[0].metadata[personal_fields]",
        ),
        (
            {"data_subject": "p", "personal_fields": "email"},
            b"[1]",
            "events[0].metadata[personal_fields]",
        ),
    ],
)
def test_bad_declarations_name_the_field(metadata: dict[str, str], data: bytes, field: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        _append(raw(data, **metadata))
    assert [v.field for v in refused.value.violations] == [field]


def test_the_size_limit_counts_what_sealing_adds() -> None:
    limits = Limits(max_event_bytes=len(SECRET) + 50)
    _append(raw(), limits=limits)
    with pytest.raises(InvalidArgument) as refused:
        _append(raw(data_subject="p"), limits=limits)
    assert [v.field for v in refused.value.violations] == ["events[0]"]
    # And what it adds is an upper bound of what sealing really adds.
    about = Personal("p" * 200, ("a", "b"))
    event = new_event(b'{"a": 1, "b": "x"}', data_subject="p" * 200, personal_fields="a,b")
    sealed = personal.seal_event(event, SubjectKey.generate("p" * 200), about, "x", 1)
    grown = len(sealed.data) - len(event.data)
    grown += sum(len(k) + len(v) for k, v in sealed.metadata.items())
    grown -= sum(len(k) + len(v) for k, v in event.metadata.items())
    assert grown <= personal.sealing_overhead(about)
