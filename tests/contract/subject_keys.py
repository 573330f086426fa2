"""The SubjectKeys contract, for Cassandra and the in-memory fake."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from eventstore.domain.personal import MasterKey, SubjectKey, WrappedKey
from eventstore.ports import SubjectKeys
from tests.support import unique

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
MASTER = MasterKey(b"m" * 32)
OTHER_MASTER = MasterKey(b"o" * 32)


def wrapped(subject: str) -> WrappedKey:
    return MASTER.wrap(SubjectKey.generate(subject), T0)


class SubjectKeysContract:
    async def test_none_yet(self, subject_keys: SubjectKeys) -> None:
        assert await subject_keys.fetch(unique("subject")) is None

    async def test_the_first_key_created_wins(self, subject_keys: SubjectKeys) -> None:
        subject = unique("subject")
        racing = [wrapped(subject) for _ in range(4)]
        winners = await asyncio.gather(*(subject_keys.create(k) for k in racing))
        assert len({w.key_id for w in winners}) == 1
        assert winners[0] in racing
        stored = await subject_keys.fetch(subject)
        assert stored == winners[0]
        assert MASTER.unwrap(stored).key == MASTER.unwrap(winners[0]).key

    async def test_destroy_is_final_and_idempotent(self, subject_keys: SubjectKeys) -> None:
        subject = unique("subject")
        key = await subject_keys.create(wrapped(subject))
        at = T0 + timedelta(days=1)
        erased = await subject_keys.destroy(subject, at)
        assert (erased.erased_at, erased.wrapped, erased.key_id) == (at, None, key.key_id)
        stored = await subject_keys.fetch(subject)
        assert stored is not None
        assert stored.erased
        assert stored.master_key_id is None
        again = await subject_keys.destroy(subject, at + timedelta(days=1))
        assert again.erased_at == at  # the first erasure's time: nothing new destroyed
        # No new key for an erased subject.
        assert (await subject_keys.create(wrapped(subject))).erased

    async def test_erasing_a_subject_without_key_records_it(
        self, subject_keys: SubjectKeys
    ) -> None:
        subject = unique("subject")
        erased = await subject_keys.destroy(subject, T0)
        assert erased.erased_at == T0
        assert (await subject_keys.create(wrapped(subject))).erased

    async def test_rewrap_replaces_only_the_key_it_read(self, subject_keys: SubjectKeys) -> None:
        subject = unique("subject")
        old = await subject_keys.create(wrapped(subject))
        plain = MASTER.unwrap(old)
        new = OTHER_MASTER.wrap(plain, old.created_at)
        assert await subject_keys.rewrap(old, new)
        stored = await subject_keys.fetch(subject)
        assert stored is not None
        assert stored.master_key_id == OTHER_MASTER.key_id
        assert OTHER_MASTER.unwrap(stored).key == plain.key
        # A second rewrap from the stale record does nothing; nor does one of an erased key.
        assert not await subject_keys.rewrap(old, new)
        await subject_keys.destroy(subject, T0)
        assert not await subject_keys.rewrap(stored, MASTER.wrap(plain, T0))
        assert (await subject_keys.fetch(subject) or old).erased

    async def test_keys_lists_every_subject(self, subject_keys: SubjectKeys) -> None:
        subjects = {unique("subject") for _ in range(3)}
        for subject in subjects:
            await subject_keys.create(wrapped(subject))
        assert subjects <= {k.subject for k in await subject_keys.keys()}

    async def test_aggregates_of_a_subject(self, subject_keys: SubjectKeys) -> None:
        subject = unique("subject")
        assert await subject_keys.aggregates(subject) == []
        for aggregate in ("b", "a", "b"):
            await subject_keys.add_aggregate(subject, aggregate)
        assert sorted(await subject_keys.aggregates(subject)) == ["a", "b"]

    async def test_subjects_of_an_aggregate(self, subject_keys: SubjectKeys) -> None:
        aggregate = unique("agg")
        assert await subject_keys.subjects(aggregate) == []
        for subject in ("q", "p"):
            await subject_keys.add_aggregate(subject, aggregate)
        assert sorted(await subject_keys.subjects(aggregate)) == ["p", "q"]
