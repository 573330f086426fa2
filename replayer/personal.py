"""Personal data in a republish: the server opens sealed events for the replayer (it reads
through the API), and Kafka must only ever hold them sealed. So republish seals them again with
the subject's key from the key store, which needs the master key (EVENTSTORE_MASTER_KEY_FILE
and Cassandra, as for the server)."""

from __future__ import annotations

from dataclasses import replace

from eventstore.domain import personal
from eventstore.domain.events import NewEvent, RecordedEvent
from eventstore.domain.personal import SubjectKey
from eventstore.usecases.personal import Keyring
from replayer.reducers import ReplayError


class Resealer:
    """Seals an opened event again (None keyring: no master key given)."""

    def __init__(self, keyring: Keyring | None) -> None:
        self._keyring = keyring

    async def __call__(self, event: RecordedEvent) -> RecordedEvent:
        about = personal.personal_of(event.metadata)
        if about is None or personal.REDACTED_KEY in event.metadata:
            return event  # nothing personal in it (any more)
        if self._keyring is None:
            raise ReplayError(
                f"event {event.aggregate_id}@{event.version} names a data subject; republish "
                "seals such events again, which needs EVENTSTORE_MASTER_KEY_FILE (and "
                "EVENTSTORE_CASSANDRA_*) as the server has them",
                code=2,
            )
        key = await self._keyring.for_opening(about.subject)
        sealed = _seal(event, key or SubjectKey.generate(about.subject), about)
        # Erased since the server read it: what a read answers now, redacted.
        return sealed if key is not None else personal.redact(sealed)


def _seal(event: RecordedEvent, key: SubjectKey, about: personal.Personal) -> RecordedEvent:
    new = NewEvent(event.event_id, event.event_type, event.data, event.content_type, event.metadata)
    sealed = personal.seal_event(new, key, about, event.aggregate_id, event.version)
    return replace(event, data=sealed.data, metadata=sealed.metadata)
