"""Principals, grants, the permissions file, quotas and authentication (no network)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from eventstore.access_cli import main as access_main
from eventstore.access_cli import new_key
from eventstore.api.auth import Authenticator
from eventstore.api.quotas import QuotaLimiter
from eventstore.domain.access import (
    ANY_TYPE,
    PRINCIPAL_KEY,
    UNRESTRICTED,
    Operation,
    PermissionDenied,
    PolicyError,
    QuotaExceeded,
    Unauthenticated,
    hash_key,
    parse_policy,
    record_principal,
)
from eventstore.domain.events import AppendRequest, ExpectedVersion, NewEvent
from eventstore.policy_file import PolicyFile

ORDERS_KEY = "esk_orders-key"
PAYMENTS_KEY = "esk_payments-key"

DOCUMENT: dict[str, Any] = {
    "principals": {
        "orders-service": {
            "keys": [hash_key(ORDERS_KEY)],
            "certificates": ["orders.example.internal"],
            "append": ["Order"],
            "read": ["Order", "Payment"],
            "query": ["Order", "Payment"],
            "subscribe": ["Order", "Payment"],
            "quotas": {
                "append_events_per_s": 100,
                "max_subscriptions": 2,
                "max_calls_in_flight": 16,
            },
        },
        "auditor": {"keys": [hash_key(PAYMENTS_KEY)], "read": ["*"], "query": ["*"]},
    }
}


def test_grants_per_operation_and_type() -> None:
    policy = parse_policy(DOCUMENT)
    orders = policy.principals["orders-service"]
    assert orders.may(Operation.APPEND, "Order")
    assert not orders.may(Operation.APPEND, "Payment")
    assert orders.may(Operation.READ, "Payment")
    with pytest.raises(PermissionDenied, match="'orders-service' may not append 'Payment'"):
        orders.require(Operation.APPEND, "Payment")
    auditor = policy.principals["auditor"]
    assert auditor.may(Operation.READ, "Anything")
    assert not auditor.may(Operation.APPEND, "Order")
    assert orders.quotas.append_events_per_s == 100
    assert orders.quotas.max_subscriptions == 2
    assert orders.quotas.max_calls_in_flight == 16


def test_narrowing_wide_reads_to_the_granted_types() -> None:
    orders = parse_policy(DOCUMENT).principals["orders-service"]
    assert orders.narrow(Operation.SUBSCRIBE, []) == frozenset({"Order", "Payment"})
    assert orders.narrow(Operation.SUBSCRIBE, ["Payment"]) == frozenset({"Payment"})
    with pytest.raises(PermissionDenied) as denied:
        orders.narrow(Operation.QUERY, ["Payment", "Invoice"])
    assert denied.value.aggregate_type == "Invoice"
    auditor = parse_policy(DOCUMENT).principals["auditor"]
    assert auditor.narrow(Operation.QUERY, []) is None  # every type
    with pytest.raises(PermissionDenied, match="may not subscribe any aggregate type"):
        auditor.narrow(Operation.SUBSCRIBE, [])
    assert UNRESTRICTED.narrow(Operation.SUBSCRIBE, []) is None


def test_keys_and_certificates_identify_principals() -> None:
    policy = parse_policy(DOCUMENT)
    assert policy.by_key(ORDERS_KEY) == policy.principals["orders-service"]
    assert policy.by_key("esk_unknown") is None
    assert policy.by_certificate(["x", "orders.example.internal"]) is not None
    assert policy.by_certificate(["x"]) is None


@pytest.mark.parametrize(
    ("document", "names"),
    [
        ({}, "principals"),
        ({"principals": {"a": {"keys": ["plain-text-key"]}}}, "principals.a.keys"),
        ({"principals": {"a": {"append": "Order"}}}, "principals.a.append"),
        ({"principals": {"a": {"write": ["Order"]}}}, "principals.a: unknown keys"),
        ({"principals": {"a": {"quotas": {"append_events_per_s": 0}}}}, "append_events_per_s"),
        ({"principals": {"a": {"quotas": {"max_subscriptions": 1.5}}}}, "max_subscriptions"),
        (
            {"principals": {"a": {"quotas": {"max_calls_in_flight": 0}}}},
            "principals.a.quotas.max_calls_in_flight: must be a positive number",
        ),
        (
            {"principals": {"a": {"quotas": {"max_calls_in_flight": -4}}}},
            "principals.a.quotas.max_calls_in_flight: must be a positive number",
        ),
        (
            {"principals": {"a": {"quotas": {"max_calls_in_flight": 2.5}}}},
            "principals.a.quotas.max_calls_in_flight: must be a whole number",
        ),
        (
            {"principals": {"a": {"quotas": {"max_calls_in_flight": "8"}}}},
            "principals.a.quotas.max_calls_in_flight: must be a positive number",
        ),
        (
            {"principals": {"a": {"quotas": {"max_calls_in_flight": True}}}},
            "principals.a.quotas.max_calls_in_flight: must be a positive number",
        ),
        (
            {"principals": {"a": {"quotas": {"append_bytes_per_s": -1}}}},
            "principals.a.quotas.append_bytes_per_s",
        ),
        (
            {"principals": {"a": {"quotas": {"append_bytes_burst": "8 MiB"}}}},
            "principals.a.quotas.append_bytes_burst",
        ),
        ({"principals": {"a": {"quotas": {"bytes_per_s": 1}}}}, "unknown keys"),
        ({"principals": {"bad name!": {}}}, "principals.bad name!"),
        (
            {
                "principals": {
                    "a": {"keys": [hash_key("k")]},
                    "b": {"keys": [hash_key("k")]},
                }
            },
            "principals.b.keys",
        ),
    ],
)
def test_a_wrong_file_is_refused_naming_the_place(document: Any, names: str) -> None:
    with pytest.raises(PolicyError, match=names.replace("!", "\\!")):
        parse_policy(document)


def test_the_principal_is_recorded_over_anything_the_client_sent() -> None:
    request = AppendRequest(
        "order-1",
        "Order",
        ExpectedVersion.any(),
        (NewEvent(uuid4(), "Placed", b"{}", "application/json", {PRINCIPAL_KEY: "forged"}),),
    )
    orders = parse_policy(DOCUMENT).principals["orders-service"]
    stamped = record_principal(request, orders)
    assert stamped.events[0].metadata[PRINCIPAL_KEY] == "orders-service"
    assert record_principal(request, UNRESTRICTED) is request  # authentication off


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_append_rate_is_a_token_bucket_per_principal() -> None:
    clock = Clock()
    quotas = QuotaLimiter(clock)
    policy = parse_policy(
        {
            "principals": {
                "noisy": {"quotas": {"append_events_per_s": 10}},
                "quiet": {"quotas": {"append_events_per_s": 10}},
            }
        }
    )
    noisy, quiet = policy.principals["noisy"], policy.principals["quiet"]
    for _ in range(10):
        quotas.take_append(noisy, 1, 0)
    with pytest.raises(QuotaExceeded) as over:
        quotas.take_append(noisy, 1, 0)
    assert over.value.retry_after_s == pytest.approx(0.1)
    quotas.take_append(quiet, 1, 0)  # a bucket of its own
    clock.now += 0.5
    for _ in range(5):
        quotas.take_append(noisy, 1, 0)
    with pytest.raises(QuotaExceeded):
        quotas.take_append(noisy, 1, 0)
    # An append larger than the burst is admitted once the bucket is full, then paid back.
    clock.now += 10
    quotas.take_append(noisy, 50, 0)
    with pytest.raises(QuotaExceeded) as debt:
        quotas.take_append(noisy, 1, 0)
    assert debt.value.retry_after_s == pytest.approx(4.1)
    quotas.take_append(UNRESTRICTED, 10_000, 0)  # no quota, no limit


def test_concurrent_subscriptions_are_counted_and_released() -> None:
    quotas = QuotaLimiter()
    orders = parse_policy(DOCUMENT).principals["orders-service"]
    with (
        quotas.subscription(orders),
        quotas.subscription(orders),
        pytest.raises(QuotaExceeded, match="max_subscriptions"),
        quotas.subscription(orders),
    ):
        pass
    with quotas.subscription(orders):
        pass


class Context:
    """What the authenticator reads of a gRPC call."""

    def __init__(
        self,
        metadata: tuple[tuple[str, str], ...] = (),
        certificate: list[bytes] | None = None,
        **names: list[bytes],
    ) -> None:
        self._metadata = metadata
        self._auth = {"x509_common_name": certificate} if certificate else {}
        # Other names, by gRPC's auth-context property: peer_dns, peer_email, peer_uri...
        self._auth.update(names)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth


def authenticate(authenticator: Authenticator, context: Context) -> str:
    return authenticator.authenticate(context).name  # type: ignore[arg-type]


def test_authentication_by_key_or_certificate() -> None:
    policy = parse_policy(DOCUMENT)
    auth = Authenticator(lambda: policy)
    bearer = (("authorization", f"Bearer {ORDERS_KEY}"),)
    assert authenticate(auth, Context(bearer)) == "orders-service"
    assert authenticate(auth, Context(certificate=[b"orders.example.internal"])) == (
        "orders-service"
    )
    assert (
        authenticate(auth, Context(bearer, certificate=[b"orders.example.internal"]))
        == "orders-service"
    )
    refused = [
        Context(),
        Context((("authorization", "Bearer esk_wrong"),)),
        Context((("authorization", ORDERS_KEY),)),  # no scheme
        Context((*bearer, ("authorization", "Bearer esk_other"))),  # two: neither is taken
        Context((*bearer, *bearer)),
        Context(certificate=[b"stranger"]),
        # A key of one principal with the certificate of another: refuse rather than pick.
        Context((("authorization", f"Bearer {PAYMENTS_KEY}"),), [b"orders.example.internal"]),
    ]
    for context in refused:
        with pytest.raises(Unauthenticated):
            authenticate(auth, context)
    assert authenticate(Authenticator(None), Context()) == UNRESTRICTED.name


def test_only_the_configured_kinds_of_certificate_names_identify_a_principal() -> None:
    # gRPC gives every subject alternative name; an email or URI name equal to a principal's
    # certificate name must not log in as it when the operator meant host names.
    policy = parse_policy(DOCUMENT)
    name = [b"orders.example.internal"]
    default = Authenticator(lambda: policy)
    assert authenticate(default, Context(peer_dns=name)) == "orders-service"
    for kind in ("peer_email", "peer_uri", "peer_ip"):
        with pytest.raises(Unauthenticated):
            authenticate(default, Context((), None, **{kind: name}))
    emails = Authenticator(lambda: policy, identity_kinds=("email",))
    assert authenticate(emails, Context(peer_email=name)) == "orders-service"
    with pytest.raises(Unauthenticated):
        authenticate(emails, Context(certificate=name))  # not the CN, then


def test_calls_that_cannot_authenticate_are_told_from_their_headers_alone() -> None:
    # Refused before their request is read (api/gate.py); what is left may still authenticate.
    policy = parse_policy(DOCUMENT)
    auth = Authenticator(lambda: policy)
    bearer = ("authorization", f"Bearer {ORDERS_KEY}")
    assert auth.refuse_early([bearer], certificates=False) is None
    assert auth.refuse_early([("x-request-id", "1"), bearer], certificates=True) is None
    assert auth.refuse_early([], certificates=True) is None  # a client certificate may do
    for headers in (
        [],
        [("authorization", "Bearer esk_wrong")],
        [("authorization", "Basic abc")],
        [bearer, bearer],
    ):
        assert isinstance(auth.refuse_early(headers, certificates=False), Unauthenticated)
    assert isinstance(auth.refuse_early([bearer, bearer], certificates=True), Unauthenticated)
    assert Authenticator(None).refuse_early([], certificates=False) is None  # auth turned off


async def test_the_file_is_reloaded_when_it_changes_and_a_broken_one_is_ignored(
    tmp_path: Path,
) -> None:
    path = tmp_path / "permissions.yaml"
    path.write_text(f"principals:\n  a:\n    keys: ['{hash_key('one')}']\n    read: ['*']\n")
    permissions = PolicyFile.load(path)
    assert permissions.current().by_key("one") is not None
    assert not await permissions.reload()  # unchanged
    path.write_text(f"principals:\n  a:\n    keys: ['{hash_key('two')}']\n")
    assert await permissions.reload()
    assert permissions.current().by_key("one") is None
    assert permissions.current().by_key("two") is not None
    path.write_text("principals: [not, a, mapping")
    assert not await permissions.reload()
    assert permissions.current().by_key("two") is not None  # the last good one stays
    watcher = asyncio.create_task(permissions.watch(0.01))
    path.write_text(f"principals:\n  a:\n    keys: ['{hash_key('three')}']\n")
    for _ in range(200):
        if permissions.current().by_key("three") is not None:
            break
        await asyncio.sleep(0.01)
    watcher.cancel()
    assert permissions.current().by_key("three") is not None


def test_a_missing_or_wrong_file_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        PolicyFile.load(tmp_path / "absent.yaml")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("principals:\n  a:\n    append: Order\n")
    with pytest.raises(PolicyError, match=r"wrong.yaml: principals.a.append"):
        PolicyFile.load(wrong)


def test_access_command_issues_keys_and_checks_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = new_key()
    assert key.startswith("esk_")
    assert len(key) > 40
    access_main(["new-key"])
    lines = capsys.readouterr().out.splitlines()
    issued = lines[0].removeprefix("key:  ")
    assert lines[1] == f"hash: {hash_key(issued)}"
    path = tmp_path / "permissions.yaml"
    path.write_text(f"principals:\n  svc:\n    keys: ['{hash_key(issued)}']\n    append: [Order]\n")
    access_main(["check", str(path)])
    assert "svc: append ['Order']" in capsys.readouterr().out
    quotas = "    quotas: {append_bytes_per_s: 1048576, append_bytes_burst: 4194304}\n"
    path.write_text(path.read_text() + quotas)
    access_main(["check", str(path)])
    assert "quotas append_bytes_per_s 1048576, append_bytes_burst 4194304" in (
        capsys.readouterr().out
    )
    zero_rate = path.read_text().replace("1048576", "0")
    for wrong in ("principals:\n  svc:\n    append: Order\n", zero_rate):
        path.write_text(wrong)
        with pytest.raises(SystemExit) as exit_code:
            access_main(["check", str(path)])
        assert exit_code.value.code == 2
    assert "append_bytes_per_s: must be a positive number" in capsys.readouterr().err
    assert ANY_TYPE == "*"
