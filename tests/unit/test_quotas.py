"""Subscriptions are bounded by default: per authenticated principal (unless its permissions
quota says otherwise) and per server, whoever the callers."""

from __future__ import annotations

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
    limiter = QuotaLimiter(subscriptions_per_principal=3, subscriptions=100)
    with ExitStack() as held:
        hold(limiter, ALICE, 3, held)
        with pytest.raises(QuotaExceeded) as refused:
            hold(limiter, ALICE, 1, held)
        assert (refused.value.quota, refused.value.limit) == ("max_subscriptions", 3)
        hold(limiter, BOB, 3, held)  # another principal has its own
    with ExitStack() as held:
        hold(limiter, ALICE, 3, held)  # closed streams gave their slots back


def test_a_permissions_quota_overrides_the_default_either_way() -> None:
    limiter = QuotaLimiter(subscriptions_per_principal=3, subscriptions=100)
    more = Principal("more", quotas=Quotas(max_subscriptions=5))
    fewer = Principal("fewer", quotas=Quotas(max_subscriptions=1))
    with ExitStack() as held:
        hold(limiter, more, 5, held)
        hold(limiter, fewer, 1, held)
        for principal in (more, fewer):
            with pytest.raises(QuotaExceeded):
                hold(limiter, principal, 1, held)


def test_the_server_bound_holds_across_principals_and_without_authentication() -> None:
    limiter = QuotaLimiter(subscriptions_per_principal=3, subscriptions=5)
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
    limiter.take_append(both, 50)
