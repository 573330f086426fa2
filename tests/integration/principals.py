"""The principals of the authentication tests (test_security.py, test_hostile_principal.py)
and helpers to call as them; the fixtures serving them are in conftest.py.

  orders    appends Order; reads, queries and subscribes to Order and Payment
  payments  appends Payment; reads, queries and subscribes to Payment; 20 events/s; 1 subscription
  billing   appends Invoice only
  auditor   reads, queries and subscribes to everything; appends nothing
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from eventstore.access_cli import new_key
from eventstore.client import ClientError, EventStoreClient
from eventstore.domain.access import hash_key

KEYS = {name: new_key() for name in ("orders", "payments", "billing", "auditor", "spare")}


def permissions_yaml(keys: dict[str, list[str]], certificates: dict[str, list[str]]) -> str:
    def listed(values: list[str]) -> str:
        return "[" + ", ".join(f"'{v}'" for v in values) + "]"

    def entry(name: str, grants: str) -> str:
        hashed = [hash_key(k) for k in keys.get(name, [])]
        return (
            f"  {name}:\n    keys: {listed(hashed)}\n"
            f"    certificates: {listed(certificates.get(name, []))}\n{grants}"
        )

    return "principals:\n" + "".join(
        [
            entry(
                "orders",
                "    append: [Order]\n    read: [Order, Payment]\n"
                "    query: [Order, Payment]\n    subscribe: [Order, Payment]\n",
            ),
            entry(
                "payments",
                "    append: [Payment]\n    read: [Payment]\n    query: [Payment]\n"
                "    subscribe: [Payment]\n"
                "    quotas: {append_events_per_s: 20, max_subscriptions: 1}\n",
            ),
            entry("billing", "    append: [Invoice]\n"),
            entry("auditor", "    read: ['*']\n    query: ['*']\n    subscribe: ['*']\n"),
        ]
    )


def default_keys() -> dict[str, list[str]]:
    return {name: [KEYS[name]] for name in ("orders", "payments", "billing", "auditor")}


Connect = Callable[..., EventStoreClient]


async def refused(call: Awaitable[object]) -> ClientError:
    with pytest.raises(ClientError) as caught:
        await call
    return caught.value


async def first_message(client: EventStoreClient, **filters: object) -> object:
    async for message in client.subscribe(**filters):  # type: ignore[arg-type]
        return message
    return None
