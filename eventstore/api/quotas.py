"""Per-principal quotas, enforced before any backend is touched: a principal over its rate is
refused at the cost of a dictionary lookup, so it cannot take Cassandra time from the others.

Quotas are per server process (N replicas of P processes each admit up to N x P times the rate).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from eventstore.domain.access import Principal, QuotaExceeded

#: How long a client is told to wait when it holds too many subscriptions.
SUBSCRIPTION_RETRY_S = 1.0


@dataclass
class _Bucket:
    tokens: float
    updated: float


class QuotaLimiter:
    """Applies each principal's `Quotas` (from the permissions file) in this process, and the
    server's own bounds on what every principal together may hold."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        subscriptions_per_principal: int | None = None,
        subscriptions: int | None = None,
    ) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._subscriptions: dict[str, int] = {}
        self._open_subscriptions = 0
        #: for authenticated principals without a quota of their own (None: unbounded)
        self._per_principal = subscriptions_per_principal
        #: for the whole server (None: unbounded)
        self._server_limit = subscriptions

    def take_append(self, principal: Principal, events: int) -> None:
        quotas = principal.quotas
        self._take(
            principal,
            "append_events_per_s",
            quotas.append_events_per_s,
            quotas.append_burst,
            events,
        )

    def take_request(self, principal: Principal) -> None:
        """Every call, whatever the RPC: reads and queries cost the backends too."""
        quotas = principal.quotas
        self._take(principal, "requests_per_s", quotas.requests_per_s, quotas.requests_burst, 1)

    def _take(
        self,
        principal: Principal,
        quota: str,
        rate: float | None,
        burst: float | None,
        amount: float,
    ) -> None:
        """A token bucket that may go into debt: a call is admitted while the bucket is not
        empty, whatever its size (so an append larger than the burst is not refused forever),
        and what it takes is paid for by the following ones."""
        if rate is None:
            return
        burst = burst or rate
        now = self._clock()
        key = (principal.name, quota)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(burst, now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens <= 0:
            # Time until the bucket is positive again.
            retry_after = (-bucket.tokens) / rate + 1.0 / rate
            raise QuotaExceeded(principal.name, quota, rate, retry_after)
        bucket.tokens -= amount

    @contextmanager
    def subscription(self, principal: Principal) -> Iterator[None]:
        limit = principal.quotas.max_subscriptions
        if limit is None and principal.authenticated:
            limit = self._per_principal
        open_now = self._subscriptions.get(principal.name, 0)
        if limit is not None and open_now >= limit:
            raise QuotaExceeded(principal.name, "max_subscriptions", limit, SUBSCRIPTION_RETRY_S)
        if self._server_limit is not None and self._open_subscriptions >= self._server_limit:
            raise QuotaExceeded(
                principal.name,
                "max_subscriptions_per_server",
                self._server_limit,
                SUBSCRIPTION_RETRY_S,
            )
        self._subscriptions[principal.name] = open_now + 1
        self._open_subscriptions += 1
        try:
            yield
        finally:
            self._open_subscriptions -= 1
            remaining = self._subscriptions[principal.name] - 1
            if remaining:
                self._subscriptions[principal.name] = remaining
            else:
                del self._subscriptions[principal.name]
