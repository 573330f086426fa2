"""Quotas: subscriptions and calls in flight bounded per principal (subscriptions per server
too), rates of calls, appended events and appended bytes; the server's defaults for
authenticated principals without their own."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack

import pytest

from eventstore.api.quotas import QuotaLimiter
from eventstore.domain.access import UNRESTRICTED, Principal, QuotaExceeded, Quotas

ALICE = Principal("alice")
BOB = Principal("bob")


def hold(limiter: QuotaLimiter, principal: Principal, count: int, stack: ExitStack) -> None:
    for _ in range(count):
        stack.enter_context(limiter.subscription(principal))


def test_a_principal_without_a_quota_of_its_own_gets_the_default_bound() -> None:
    limiter = QuotaLimiter(defaults=Quotas(max_subscriptions=3), subscriptions=100)
    with ExitStack() as held:
        hold(limiter, ALICE, 3, held)
        with pytest.raises(QuotaExceeded) as refused:
            hold(limiter, ALICE, 1, held)
        assert (refused.value.quota, refused.value.limit) == ("max_subscriptions", 3)
        hold(limiter, BOB, 3, held)  # another principal has its own
    with ExitStack() as held:
        hold(limiter, ALICE, 3, held)  # closed streams gave their slots back


def test_a_permissions_quota_overrides_the_default_either_way() -> None:
    limiter = QuotaLimiter(defaults=Quotas(max_subscriptions=3), subscriptions=100)
    more = Principal("more", quotas=Quotas(max_subscriptions=5))
    fewer = Principal("fewer", quotas=Quotas(max_subscriptions=1))
    with ExitStack() as held:
        hold(limiter, more, 5, held)
        hold(limiter, fewer, 1, held)
        for principal in (more, fewer):
            with pytest.raises(QuotaExceeded):
                hold(limiter, principal, 1, held)


def test_the_server_bound_holds_across_principals_and_without_authentication() -> None:
    limiter = QuotaLimiter(defaults=Quotas(max_subscriptions=3), subscriptions=5)
    with ExitStack() as held:
        hold(limiter, ALICE, 3, held)
        hold(limiter, BOB, 2, held)
        with pytest.raises(QuotaExceeded) as refused:
            hold(limiter, Principal("carol"), 1, held)
        assert refused.value.quota == "max_subscriptions_per_server"
    # Authentication off: every caller is one principal, bounded by the server's limit only.
    with ExitStack() as held:
        hold(limiter, UNRESTRICTED, 5, held)
        with pytest.raises(QuotaExceeded):
            hold(limiter, UNRESTRICTED, 1, held)


def test_every_call_counts_against_a_requests_quota() -> None:
    now = [0.0]
    limiter = QuotaLimiter(clock=lambda: now[0])
    limited = Principal("limited", quotas=Quotas(requests_per_s=2, requests_burst=3))
    for _ in range(3):
        limiter.take_request(limited)
    with pytest.raises(QuotaExceeded) as refused:
        limiter.take_request(limited)
    assert refused.value.quota == "requests_per_s"
    assert refused.value.retry_after_s == pytest.approx(0.5)
    for _ in range(100):
        limiter.take_request(ALICE)  # no quota of its own: unlimited
    now[0] += 0.5  # one call's worth refilled
    limiter.take_request(limited)
    with pytest.raises(QuotaExceeded):
        limiter.take_request(limited)
    # The appended-events quota is a bucket of its own.
    both = Principal("both", quotas=Quotas(requests_per_s=1, append_events_per_s=100))
    limiter.take_request(both)
    limiter.take_append(both, 50, 0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


MIB = 1024 * 1024


def test_appended_bytes_are_a_bucket_of_their_own() -> None:
    clock = Clock()
    limiter = QuotaLimiter(clock)
    limited = Principal(
        "limited", quotas=Quotas(append_bytes_per_s=MIB, append_bytes_burst=2 * MIB)
    )
    limiter.take_append(limited, 1, 2 * MIB)  # the whole burst
    with pytest.raises(QuotaExceeded) as refused:
        limiter.take_append(limited, 1, 10)
    assert (refused.value.quota, refused.value.limit) == ("append_bytes_per_s", MIB)
    assert refused.value.retry_after_s == pytest.approx(1 / MIB)  # positive again at once
    assert "append_bytes_per_s (1048576)" in str(refused.value)
    limiter.take_append(Principal("other"), 1, 10 * MIB)  # no quota, no default: unlimited
    clock.now += 0.5
    limiter.take_append(limited, 1, MIB // 2)  # half a second refilled half a MiB
    with pytest.raises(QuotaExceeded):
        limiter.take_append(limited, 1, 1)
    # An append larger than the burst is admitted while the bucket is positive, then paid for.
    clock.now += 10
    limiter.take_append(limited, 1, 6 * MIB)
    with pytest.raises(QuotaExceeded) as debt:
        limiter.take_append(limited, 1, 1)
    assert debt.value.retry_after_s == pytest.approx(4.0, abs=1e-3)
    clock.now += 4.01
    limiter.take_append(limited, 1, 1)


def test_an_append_refused_by_one_bucket_costs_nothing_of_the_other() -> None:
    clock = Clock()
    limiter = QuotaLimiter(clock)
    both = Principal(
        "both",
        quotas=Quotas(
            append_events_per_s=1, append_burst=20, append_bytes_per_s=1, append_bytes_burst=2
        ),
    )
    limiter.take_append(both, 10, 2)  # events: 10 left; bytes: 0
    with pytest.raises(QuotaExceeded) as refused:
        limiter.take_append(both, 10, 1)
    assert refused.value.quota == "append_bytes_per_s"
    clock.now += 1  # events: 11 (1 had the refused append been charged); bytes: 1
    limiter.take_append(both, 11, 1)  # events: 0 (or -10); bytes: 0
    clock.now += 1  # events: 1 (or -9: refused); bytes: 1
    limiter.take_append(both, 1, 1)


def test_defaults_bound_authenticated_principals_without_a_quota_of_their_own() -> None:
    clock = Clock()
    defaults = Quotas(requests_per_s=10, append_bytes_per_s=1000)
    limiter = QuotaLimiter(clock, defaults=defaults)
    for _ in range(10):  # a burst of one second's worth
        limiter.take_request(ALICE)
    with pytest.raises(QuotaExceeded) as refused:
        limiter.take_request(ALICE)
    assert (refused.value.quota, refused.value.limit) == ("requests_per_s", 10)
    limiter.take_request(BOB)  # per principal
    limiter.take_append(ALICE, 1, 1000)
    with pytest.raises(QuotaExceeded) as over:
        limiter.take_append(ALICE, 1, 1)
    assert over.value.quota == "append_bytes_per_s"
    # A quota of its own wins, higher or lower, each kind on its own: this one's requests are
    # its own (3/s), its bytes the default.
    own = Principal("own", quotas=Quotas(requests_per_s=3))
    more = Principal("more", quotas=Quotas(requests_per_s=50, append_bytes_per_s=10_000))
    for _ in range(3):
        limiter.take_request(own)
    with pytest.raises(QuotaExceeded):
        limiter.take_request(own)
    limiter.take_append(own, 1, 1000)
    with pytest.raises(QuotaExceeded):
        limiter.take_append(own, 1, 1)
    for _ in range(50):
        limiter.take_request(more)
    limiter.take_append(more, 1, 10_000)
    # A burst of its own over the default rate.
    bursty = Principal("bursty", quotas=Quotas(requests_burst=20))
    for _ in range(20):
        limiter.take_request(bursty)
    with pytest.raises(QuotaExceeded) as burst:
        limiter.take_request(bursty)
    assert burst.value.limit == 10
    # Authentication off: every caller is one principal, bounded per server only.
    for _ in range(100):
        limiter.take_request(UNRESTRICTED)
        limiter.take_append(UNRESTRICTED, 1000, MIB)


def test_calls_in_flight_are_counted_per_principal_and_given_back() -> None:
    limiter = QuotaLimiter(defaults=Quotas(max_calls_in_flight=3))
    with ExitStack() as held:
        for _ in range(3):
            held.enter_context(limiter.call(ALICE))
        with pytest.raises(QuotaExceeded) as refused:
            held.enter_context(limiter.call(ALICE))
        assert (refused.value.quota, refused.value.limit) == ("max_calls_in_flight", 3)
        assert refused.value.retry_after_s == pytest.approx(0.1)
        assert limiter.calls_in_flight(ALICE) == 3  # the refused one took nothing
        for _ in range(3):  # another principal has its own
            held.enter_context(limiter.call(BOB))
        # Subscriptions are not calls in flight: bounded on their own.
        held.enter_context(limiter.subscription(ALICE))
    assert limiter.calls_in_flight(ALICE) == limiter.calls_in_flight(BOB) == 0


def test_a_call_that_fails_or_is_cancelled_gives_its_slot_back() -> None:
    limiter = QuotaLimiter(defaults=Quotas(max_calls_in_flight=1))
    for ending in (RuntimeError("backend"), QuotaExceeded("alice", "requests_per_s", 1, 1)):
        with pytest.raises(type(ending)), limiter.call(ALICE):
            raise ending
        assert limiter.calls_in_flight(ALICE) == 0
    # A client that went away: the task is cancelled inside the call (a BaseException).
    with pytest.raises(asyncio.CancelledError), limiter.call(ALICE):
        raise asyncio.CancelledError
    with limiter.call(ALICE):
        pass


def test_a_calls_in_flight_quota_of_its_own_wins_and_authentication_off_is_unbounded() -> None:
    limiter = QuotaLimiter(defaults=Quotas(max_calls_in_flight=2))
    more = Principal("more", quotas=Quotas(max_calls_in_flight=4))
    fewer = Principal("fewer", quotas=Quotas(max_calls_in_flight=1))
    with ExitStack() as held:
        for principal, allowed in ((more, 4), (fewer, 1), (ALICE, 2)):
            for _ in range(allowed):
                held.enter_context(limiter.call(principal))
            with pytest.raises(QuotaExceeded):
                held.enter_context(limiter.call(principal))
        # Authentication off: one anonymous principal, bounded by gRPC's per-process limit only.
        for _ in range(100):
            held.enter_context(limiter.call(UNRESTRICTED))
    # No default at all: a principal without a quota of its own is counted, never refused.
    unbounded = QuotaLimiter()
    with ExitStack() as held:
        for _ in range(100):
            held.enter_context(unbounded.call(ALICE))
        assert unbounded.calls_in_flight(ALICE) == 100


async def test_read_bytes_are_taken_before_each_page_and_slow_reads_instead_of_refusing() -> None:
    clock = Clock()
    limiter = QuotaLimiter(clock, defaults=Quotas(read_bytes_per_s=MIB))
    reader = Principal("reader", authenticated=True)
    # Its first page is assumed 1 kB an event: 500 events take ~half the 1 MiB burst.
    first = await limiter.reserve_read(reader, 500)
    assert first == 500 * 1024
    # Two reads starting at once cannot both fetch unseen: the second takes the rest.
    second = await limiter.reserve_read(reader, 500)
    assert second == 500 * 1024
    # The pages were 1,100 bytes an event, more than taken: in debt (~50 kB, 0.05 s); the
    # next pages are reserved at the size seen.
    limiter.settle_read(reader, first, 500 * 1100, 500)
    limiter.settle_read(reader, second, 500 * 1100, 500)
    waiting = asyncio.create_task(limiter.reserve_read(reader, 500))
    await asyncio.sleep(0.01)
    assert not waiting.done(), "in debt: the next page waits"
    clock.now += 0.06
    assert await asyncio.wait_for(waiting, 5) == 500 * 1100
    # Its own quota wins over the default; others' reads are not slowed; a read that ends
    # gives back what its last reservation did not use.
    own = Principal("own", quotas=Quotas(read_bytes_per_s=10 * MIB), authenticated=True)
    reserved = await limiter.reserve_read(own, 1000)
    limiter.settle_read(own, reserved, 0, 0)
    assert limiter._buckets[("own", "read_bytes_per_s")].tokens == 10 * MIB
    assert await limiter.reserve_read(Principal("other", authenticated=True), 10) == 10 * 1024
    assert await limiter.reserve_read(UNRESTRICTED, 10) == 0  # authentication off: no default
