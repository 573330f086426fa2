"""Personal data: sealed with a key per data subject, so that destroying the key erases it
(crypto-shredding) from every copy the store made, Kafka and backups included.

Pure rules, no driver: the envelope format, the per-subject keys and their wrapping by a
master key, and what an event looks like sealed, opened and redacted.

* A client names the event's **data subject** with the metadata key `data_subject` (a plain
  key: clients may not set `$` keys). Without `personal_fields` the whole payload is personal;
  with it (comma-separated JSON paths into a JSON object, e.g. ``email,address.street``) only
  those fields are, and the rest of the payload stays readable and searchable.
* The server seals the personal part with the subject's key (AES-256-GCM) and marks the event
  with the reserved metadata keys `$sealed` (the key id) and, for fields, `$sealed_fields`.
* **Envelope** (versioned): ``b"ESP" | 0x01 | u16 subject length | subject (UTF-8) |
  key id (16 bytes) | nonce (12 bytes) | ciphertext and tag``. The header is authenticated, and
  so are the aggregate id, version, event id (and the field's path): a sealed payload moved to
  another event, version or field does not open.
* After erasure an event reads with the personal part removed (the whole payload: empty
  bytes; a field: null) and metadata ``$redacted: erased``; reading never fails for it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import struct
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from eventstore.domain.errors import EventStoreError
from eventstore.domain.events import NewEvent, RecordedEvent
from eventstore.domain.snapshots import Snapshot

#: Metadata key by which a client names the data subject of an event.
SUBJECT_KEY = "data_subject"
#: Metadata key listing the personal JSON fields (comma-separated paths); absent: all of it.
FIELDS_KEY = "personal_fields"
#: Set by the server on a sealed event: the id of the subject key that sealed it.
SEALED_KEY = "$sealed"
#: Set by the server when only some fields are sealed: which (as in `personal_fields`).
SEALED_FIELDS_KEY = "$sealed_fields"
#: Set on events read after their subject was erased.
REDACTED_KEY = "$redacted"
REDACTED_VALUE = "erased"
#: A sealed JSON field: {"$sealed": "<base64 envelope>"}.
SEALED_FIELD = "$sealed"

MAX_SUBJECT_CHARS = 200
MAX_FIELDS = 32
_MAGIC = b"ESP"
_FORMAT = 1
_NONCE_BYTES = 12
_TAG_BYTES = 16
KEY_BYTES = 32  # AES-256


class PersonalDataError(EventStoreError):
    """Base of the errors about personal data."""


class PersonalDataNotConfigured(PersonalDataError):
    """An event names a data subject, and the server has no master key to seal it with:
    refused, rather than stored in plaintext."""

    setting = "EVENTSTORE_MASTER_KEY_FILE"

    def __init__(self) -> None:
        super().__init__(
            f"events naming a {SUBJECT_KEY!r} are encrypted, and this server has no master "
            f"key ({self.setting} is not set)"
        )


class SubjectErased(PersonalDataError):
    """The data subject was erased: nothing more is stored about them under that id."""

    def __init__(self, subject: str, field: str) -> None:
        self.subject = subject
        self.field = field
        super().__init__(
            f"data subject {subject!r} was erased; events about this person need a new subject id"
        )


class MasterKeyMissing(PersonalDataError):
    """A subject key is wrapped by a master key this process was not given (a rotation is
    half done, or the wrong key file is mounted)."""

    def __init__(self, master_key_id: str) -> None:
        self.master_key_id = master_key_id
        super().__init__(
            f"a subject key is wrapped by master key {master_key_id!r}, which this server "
            "does not have (EVENTSTORE_MASTER_KEY_FILE / EVENTSTORE_PREVIOUS_MASTER_KEY_FILE)"
        )


class SealBroken(PersonalDataError):
    """A sealed payload does not open with its key: tampered with, or moved."""


# --- what is personal -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Personal:
    """Which part of an event is about `subject`: the whole payload (no paths) or the JSON
    fields at `paths` (dot-separated keys into objects). The schema registry may supply the
    paths as well as a client's `personal_fields`."""

    subject: str
    paths: tuple[str, ...] = ()


def subject_problem(subject: str) -> str | None:
    """What is wrong with a subject id (None: nothing)."""
    if not subject or len(subject) > MAX_SUBJECT_CHARS:
        return f"must be 1 to {MAX_SUBJECT_CHARS} characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in subject):
        return "must not contain control characters"
    return None


def parse_paths(text: str) -> tuple[str, ...]:
    """`personal_fields` as paths; ValueError with the reason when malformed."""
    paths = tuple(p.strip() for p in text.split(","))
    if not text.strip() or len(paths) > MAX_FIELDS:
        raise ValueError(f"must list 1 to {MAX_FIELDS} comma-separated field paths")
    for path in paths:
        if not path or any(not part for part in path.split(".")):
            raise ValueError(f"{path!r} is not a path such as 'email' or 'address.street'")
    return tuple(dict.fromkeys(paths))


def personal_of(metadata: Mapping[str, str]) -> Personal | None:
    """What an event's client metadata declares personal (validated beforehand)."""
    subject = metadata.get(SUBJECT_KEY)
    if subject is None:
        return None
    fields = metadata.get(FIELDS_KEY)
    return Personal(subject, parse_paths(fields) if fields is not None else ())


def sealing_overhead(personal: Personal) -> int:
    """Bytes sealing adds to an event at most (envelopes, marker metadata): counted in the
    event's size limit, so that what is accepted still fits every place it goes."""
    envelope = len(_MAGIC) + 1 + 2 + len(personal.subject.encode()) + 16 + _NONCE_BYTES + _TAG_BYTES
    marker = len(SEALED_KEY) + 32
    if not personal.paths:
        return envelope + marker
    # Each field becomes {"$sealed": "<base64 envelope>"}; its path is listed once more.
    per_field = (envelope + 2) * 4 // 3 + len(SEALED_FIELD) + 8
    listed = len(SEALED_FIELDS_KEY) + sum(len(p.encode()) + 1 for p in personal.paths)
    return marker + listed + len(personal.paths) * per_field


# --- keys ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubjectKey:
    """A subject's data key, in the clear: only ever in memory."""

    subject: str
    key_id: uuid.UUID
    key: bytes = field(repr=False)

    @classmethod
    def generate(cls, subject: str) -> SubjectKey:
        return cls(subject, uuid.uuid4(), AESGCM.generate_key(bit_length=KEY_BYTES * 8))


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A subject key as stored: encrypted by a master key. Erased: `wrapped` is None."""

    subject: str
    key_id: uuid.UUID
    master_key_id: str | None
    wrapped: bytes | None
    created_at: datetime
    erased_at: datetime | None = None

    @property
    def erased(self) -> bool:
        return self.wrapped is None


class MasterKey:
    """The key that wraps every subject key (from a file or a Kubernetes Secret). Its id is
    derived from it, so a rotation needs no separate naming."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a master key is {KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)
        self.key_id = "mk-" + hashlib.sha256(b"eventstore master key id\0" + key).hexdigest()[:16]

    @classmethod
    def from_text(cls, text: str) -> MasterKey:
        """The file's content: 32 random bytes in base64 (`openssl rand -base64 32`)."""
        try:
            key = base64.b64decode(text.strip(), validate=True)
        except binascii.Error as exc:
            raise ValueError("a master key file holds 32 bytes in base64") from exc
        return cls(key)

    @staticmethod
    def _context(subject: str, key_id: uuid.UUID) -> bytes:
        return b"eventstore subject key\0" + key_id.bytes + subject.encode()

    def wrap(self, key: SubjectKey, at: datetime) -> WrappedKey:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, key.key, self._context(key.subject, key.key_id))
        return WrappedKey(key.subject, key.key_id, self.key_id, nonce + sealed, at)

    def unwrap(self, wrapped: WrappedKey) -> SubjectKey:
        assert wrapped.wrapped is not None
        nonce, sealed = wrapped.wrapped[:_NONCE_BYTES], wrapped.wrapped[_NONCE_BYTES:]
        try:
            key = self._aead.decrypt(nonce, sealed, self._context(wrapped.subject, wrapped.key_id))
        except InvalidTag as exc:
            raise SealBroken(f"the key of subject {wrapped.subject!r} does not unwrap") from exc
        return SubjectKey(wrapped.subject, wrapped.key_id, key)


class MasterKeys:
    """The current master key (wraps new keys) and earlier ones (still unwrap, during a
    rotation)."""

    def __init__(self, current: MasterKey, previous: Iterable[MasterKey] = ()) -> None:
        self.current = current
        self._by_id = {k.key_id: k for k in (*previous, current)}

    def unwrap(self, wrapped: WrappedKey) -> SubjectKey:
        master = self._by_id.get(wrapped.master_key_id or "")
        if master is None:
            raise MasterKeyMissing(wrapped.master_key_id or "")
        return master.unwrap(wrapped)


# --- the envelope --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Envelope:
    subject: str
    key_id: uuid.UUID
    nonce: bytes
    ciphertext: bytes
    header: bytes


def _header(subject: str, key_id: uuid.UUID) -> bytes:
    raw = subject.encode()
    return _MAGIC + bytes([_FORMAT]) + struct.pack(">H", len(raw)) + raw + key_id.bytes


def parse_envelope(data: bytes) -> Envelope:
    if data[:3] != _MAGIC or len(data) < 6 or data[3] != _FORMAT:
        raise SealBroken("not a sealed payload of a known format")
    (length,) = struct.unpack(">H", data[4:6])
    end = 6 + length + 16
    if len(data) < end + _NONCE_BYTES + _TAG_BYTES:
        raise SealBroken("sealed payload cut short")
    subject = data[6 : 6 + length].decode(errors="replace")
    key_id = uuid.UUID(bytes=data[6 + length : end])
    nonce = data[end : end + _NONCE_BYTES]
    return Envelope(subject, key_id, nonce, data[end + _NONCE_BYTES :], data[:end])


def _bound_to(aggregate_id: str, version: int, event_id: uuid.UUID, path: str) -> bytes:
    return b"\0".join(
        (aggregate_id.encode(), struct.pack(">q", version), event_id.bytes, path.encode())
    )


def seal_bytes(key: SubjectKey, plaintext: bytes, binding: bytes) -> bytes:
    header = _header(key.subject, key.key_id)
    nonce = os.urandom(_NONCE_BYTES)
    return header + nonce + AESGCM(key.key).encrypt(nonce, plaintext, header + binding)


def open_bytes(key: SubjectKey, envelope: Envelope, binding: bytes) -> bytes:
    try:
        return AESGCM(key.key).decrypt(
            envelope.nonce, envelope.ciphertext, envelope.header + binding
        )
    except InvalidTag as exc:
        raise SealBroken("a sealed payload does not open: altered, or moved") from exc


# --- events ------------------------------------------------------------------------------


def _split(path: str) -> list[str]:
    return path.split(".")


def _seal_fields(
    key: SubjectKey, data: bytes, paths: tuple[str, ...], bind: Callable[[str], bytes]
) -> tuple[bytes, tuple[str, ...]]:
    document = json.loads(data)
    sealed: list[str] = []
    for path in paths:
        *parents, last = _split(path)
        node = document
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node:
            continue  # absent fields are nothing to seal
        plain = json.dumps(node[last], ensure_ascii=False, separators=(",", ":")).encode()
        node[last] = {SEALED_FIELD: base64.b64encode(seal_bytes(key, plain, bind(path))).decode()}
        sealed.append(path)
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode(), tuple(sealed)


def seal_event(
    event: NewEvent, key: SubjectKey, personal: Personal, aggregate_id: str, version: int
) -> NewEvent:
    """`event` with its personal part sealed for storage at `version` of `aggregate_id`."""

    def bind(path: str) -> bytes:
        return _bound_to(aggregate_id, version, event.event_id, path)

    metadata = {**event.metadata, SEALED_KEY: key.key_id.hex}
    if not personal.paths:
        return replace(event, data=seal_bytes(key, event.data, bind("")), metadata=metadata)
    data, sealed = _seal_fields(key, event.data, personal.paths, bind)
    metadata[SEALED_FIELDS_KEY] = ",".join(sealed)
    return replace(event, data=data, metadata=metadata)


def sealed_subject(event: RecordedEvent) -> str | None:
    """The subject a sealed event is about (None: not sealed)."""
    if SEALED_KEY not in event.metadata:
        return None
    return event.metadata.get(SUBJECT_KEY)


def open_event(event: RecordedEvent, key: SubjectKey | None) -> RecordedEvent:
    """A sealed event as its writer sent it (the marker keys removed); redacted when `key` is
    None (the subject was erased) or is not the one that sealed it (erased, then the id
    reused)."""
    metadata = {k: v for k, v in event.metadata.items() if k not in (SEALED_KEY, SEALED_FIELDS_KEY)}
    if key is None or key.key_id.hex != event.metadata.get(SEALED_KEY):
        return redact(event)

    def bind(path: str) -> bytes:
        return _bound_to(event.aggregate_id, event.version, event.event_id, path)

    fields = event.metadata.get(SEALED_FIELDS_KEY)
    if fields is None and not event.data:
        # Nothing sealed came along (a search document that had to leave its payload out).
        return replace(event, metadata=metadata)
    if fields is None:
        data = open_bytes(key, parse_envelope(event.data), bind(""))
        return replace(event, data=data, metadata=metadata)
    document = json.loads(event.data)
    for path, node, last in _sealed_nodes(document, fields):
        envelope = parse_envelope(base64.b64decode(node[last][SEALED_FIELD]))
        node[last] = json.loads(open_bytes(key, envelope, bind(path)))
    data = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
    return replace(event, data=data, metadata=metadata)


def _sealed_nodes(document: Any, fields: str) -> list[tuple[str, dict[str, Any], str]]:
    found = []
    for path in (p for p in fields.split(",") if p):
        *parents, last = _split(path)
        node = document
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if (
            isinstance(node, dict)
            and isinstance(node.get(last), dict)
            and SEALED_FIELD in node[last]
        ):
            found.append((path, node, last))
    return found


def redact(event: RecordedEvent) -> RecordedEvent:
    """The event without its personal part: what every read answers after erasure."""
    metadata = {k: v for k, v in event.metadata.items() if k not in (SEALED_KEY, SEALED_FIELDS_KEY)}
    metadata[REDACTED_KEY] = REDACTED_VALUE
    fields = event.metadata.get(SEALED_FIELDS_KEY)
    if fields is None:
        return replace(event, data=b"", metadata=metadata)
    try:
        document = json.loads(event.data)
    except ValueError:
        return replace(event, data=b"", metadata=metadata)
    for _, node, last in _sealed_nodes(document, fields):
        node[last] = None
    data = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
    return replace(event, data=data, metadata=metadata)


# --- snapshots ---------------------------------------------------------------------------

#: A sealed snapshot's stored state_type: ``$sealed:<layers>:<the client's state_type>``.
SEALED_STATE_PREFIX = "$sealed:"
_SNAPSHOT = uuid.UUID(int=0)


def seal_snapshot(snapshot: Snapshot, keys: Sequence[SubjectKey]) -> Snapshot:
    """A snapshot of an aggregate holding events about `keys`' subjects, sealed once per
    subject (nested): erasing any one of them leaves it unreadable."""
    bind = _bound_to(snapshot.aggregate_id, snapshot.version, _SNAPSHOT, "snapshot")
    state = snapshot.state
    for key in keys:
        state = seal_bytes(key, state, bind)
    kind = f"{SEALED_STATE_PREFIX}{len(keys)}:{snapshot.state_type}"
    return replace(snapshot, state=state, state_type=kind)


def sealed_snapshot_subject(snapshot: Snapshot) -> str | None:
    """The subject of a sealed snapshot's outer layer (None: not sealed)."""
    if not snapshot.state_type.startswith(SEALED_STATE_PREFIX):
        return None
    return parse_envelope(snapshot.state).subject


def open_snapshot_layer(snapshot: Snapshot, key: SubjectKey) -> Snapshot:
    """One layer of a sealed snapshot opened (the last one restores the client's type)."""
    layers, _, kind = snapshot.state_type[len(SEALED_STATE_PREFIX) :].partition(":")
    bind = _bound_to(snapshot.aggregate_id, snapshot.version, _SNAPSHOT, "snapshot")
    state = open_bytes(key, parse_envelope(snapshot.state), bind)
    left = int(layers) - 1
    return replace(
        snapshot, state=state, state_type=f"{SEALED_STATE_PREFIX}{left}:{kind}" if left else kind
    )


# --- erasure -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErasureStep:
    """What erasure did in one store: `count` things, described by `action`."""

    store: str
    action: str
    count: int


@dataclass(frozen=True, slots=True)
class ErasureReceipt:
    subject: str
    #: True when this call destroyed the key; False when it was already erased (idempotent).
    key_destroyed: bool
    #: when the subject was first erased
    erased_at: datetime
    steps: tuple[ErasureStep, ...]
    audit_event_id: uuid.UUID
