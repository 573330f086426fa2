"""Per-principal quotas, enforced before any backend is touched: a principal over its rate is
refused at the cost of a dictionary lookup, so it cannot take Cassandra time from the others.

Quotas are per server process (N replicas of P processes each admit up to N x P times the rate).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from eventstore.domain.access import Principal, QuotaExceeded, Quotas

#: How long a client is told to wait when it holds too many subscriptions.
SUBSCRIPTION_RETRY_S = 1.0
#: ... when it has too many calls in flight: most calls end within milliseconds, so a slot
#: is soon free again (unless the principal holds them all with slow calls).
CALL_RETRY_S = 0.1
#: Bytes per event a principal's first read page is assumed to take (then: what its pages took).
EVENT_BYTES_GUESS = 1024


@dataclass
class _Bucket:
    tokens: float
    updated: float


class QuotaLimiter:
    """Applies each principal's `Quotas` (from the permissions file) in this process, and the
    server's own bounds: `defaults` for authenticated principals that leave a quota unset
    (their own value wins, higher or lower), `subscriptions` for every principal together."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        defaults: Quotas | None = None,
        subscriptions: int | None = None,
    ) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._subscriptions: dict[str, int] = {}
        self._open_subscriptions = 0
        self._calls: dict[str, int] = {}
        #: bytes per event of each principal's recent read pages, to reserve the next ones
        self._event_bytes: dict[str, float] = {}
        self._defaults = defaults or Quotas()
        #: for the whole server (None: unbounded)
        self._server_limit = subscriptions

    def _quota(self, principal: Principal, name: str) -> Any:
        """The principal's own value, else the server's default (authenticated callers only:
        with authentication off every caller is one principal, bounded per server only)."""
        own = getattr(principal.quotas, name)
        if own is None and principal.authenticated:
            return getattr(self._defaults, name)
        return own

    def take_append(self, principal: Principal, events: int, size: int) -> None:
        """`size`: the request's bytes as received, so the quota is counted before anything
        is decoded."""
        buckets = [
            self._admit(principal, "append_events_per_s", "append_burst"),
            self._admit(principal, "append_bytes_per_s", "append_bytes_burst"),
        ]
        # Taken only once both admit the call: a refusal by one costs nothing of the other.
        for bucket, amount in zip(buckets, (events, size), strict=True):
            if bucket is not None:
                bucket.tokens -= amount

    def take_request(self, principal: Principal) -> None:
        """Every call, whatever the RPC: reads and queries cost the backends too."""
        bucket = self._admit(principal, "requests_per_s", "requests_burst")
        if bucket is not None:
            bucket.tokens -= 1

    def _admit(self, principal: Principal, quota: str, burst_quota: str) -> _Bucket | None:
        """The principal's token bucket for `quota` (None: unlimited), refilled, if it admits a
        call. It may go into debt: a call is admitted while the bucket is not empty, whatever
        its size (so an append larger than the burst is not refused forever), and what it
        takes is paid for by the following ones."""
        refilled = self._refilled(principal, quota, burst_quota)
        if refilled is None:
            return None
        bucket, rate = refilled
        if bucket.tokens <= 0:
            # Time until the bucket is positive again.
            retry_after = (-bucket.tokens) / rate + 1.0 / rate
            raise QuotaExceeded(principal.name, quota, rate, retry_after)
        return bucket

    def _refilled(
        self, principal: Principal, quota: str, burst_quota: str
    ) -> tuple[_Bucket, float] | None:
        """The principal's bucket for `quota` and its rate, refilled to now (None: no quota)."""
        rate: float | None = self._quota(principal, quota)
        if rate is None:
            return None
        burst: float = self._quota(principal, burst_quota) or rate
        now = self._clock()
        key = (principal.name, quota)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(burst, now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        return bucket, rate

    async def reserve_read(self, principal: Principal, events: int) -> int:
        """Take from the principal's read bytes ahead of fetching a page of up to `events`
        events, waiting first while its bucket is empty; the bytes taken (0: no quota). Taken
        before the fetch, at the size its pages have had, so that many reads starting at once
        cannot all fetch a page before the first is counted. Reads are slowed, never refused:
        a long read under way should finish, only slower."""
        while True:
            refilled = self._refilled(principal, "read_bytes_per_s", "read_bytes_burst")
            if refilled is None:
                return 0
            bucket, rate = refilled
            if bucket.tokens > 0:
                estimate = int(events * self._event_bytes.get(principal.name, EVENT_BYTES_GUESS))
                bucket.tokens -= estimate
                return estimate
            await asyncio.sleep((-bucket.tokens) / rate + 1.0 / rate)

    def settle_read(self, principal: Principal, reserved: int, sent: int, events: int) -> None:
        """A page of `events` events, `sent` bytes, was sent where `reserved` were taken."""
        refilled = self._refilled(principal, "read_bytes_per_s", "read_bytes_burst")
        if refilled is None:
            return
        refilled[0].tokens -= sent - reserved
        if events:
            seen = sent / events
            known = self._event_bytes.get(principal.name)
            self._event_bytes[principal.name] = seen if known is None else (known + seen) / 2

    @contextmanager
    def call(self, principal: Principal) -> Iterator[None]:
        """One call in flight, from its admission to its answer or its stream's end, whatever
        ends it (an error, the client cancelling or going away). Every RPC but Subscribe,
        which `subscription` bounds: within its rate, a principal holding many slow calls (long
        reads, streams it does not read) would take the server's concurrent-RPC slots from the
        others. Counted whatever the quota, so a reloaded permissions file finds the count."""
        limit: int | None = self._quota(principal, "max_calls_in_flight")
        in_flight = self._calls.get(principal.name, 0)
        if limit is not None and in_flight >= limit:
            raise QuotaExceeded(principal.name, "max_calls_in_flight", limit, CALL_RETRY_S)
        self._calls[principal.name] = in_flight + 1
        try:
            yield
        finally:
            _release(self._calls, principal.name)

    def calls_in_flight(self, principal: Principal) -> int:
        """What `call` compares with the bound: this principal's calls running now."""
        return self._calls.get(principal.name, 0)

    @contextmanager
    def subscription(self, principal: Principal) -> Iterator[None]:
        limit: int | None = self._quota(principal, "max_subscriptions")
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
            _release(self._subscriptions, principal.name)


def _release(counts: dict[str, int], name: str) -> None:
    """One fewer for `name`; a principal with none left leaves no entry (names come and go
    with the permissions file)."""
    remaining = counts[name] - 1
    if remaining:
        counts[name] = remaining
    else:
        del counts[name]
