"""Who may do what: principals, their grants per aggregate type, their quotas, and the policy
that maps credentials to principals.

Pure domain: no file, no gRPC. The policy is parsed from a plain mapping (api/policy_file.py
reads it from YAML); credentials are matched by the SHA-256 of an API key or by the identity
in a verified client certificate.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from eventstore.domain.errors import EventStoreError
from eventstore.domain.events import AppendRequest

#: Stands for every aggregate type in a grant.
ANY_TYPE = "*"
#: Metadata key the server sets on every event to the principal that appended it.
PRINCIPAL_KEY = "$principal"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")
_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


class Operation(enum.Enum):
    APPEND = "append"
    READ = "read"
    QUERY = "query"
    SUBSCRIBE = "subscribe"
    #: EraseSubject: crypto-shred a data subject. Not per aggregate type (a person's events
    #: span types): granted as `erase: ["*"]`.
    ERASE = "erase"
    #: register versions of the aggregate type's event schemas (reading them needs READ)
    REGISTER_SCHEMA = "register_schema"


class Unauthenticated(EventStoreError):
    """No credential, or one that identifies no principal. Says nothing about which."""


class PermissionDenied(EventStoreError):
    def __init__(self, principal: str, operation: Operation, aggregate_type: str) -> None:
        self.principal = principal
        self.operation = operation
        self.aggregate_type = aggregate_type
        what = "any aggregate type" if aggregate_type == ANY_TYPE else repr(aggregate_type)
        if operation is Operation.ERASE:
            what = "data subjects"
        super().__init__(f"principal {principal!r} may not {operation.value} {what}")


class GrantsChanged(EventStoreError):
    """The permissions changed under an open stream: it ends, and the client resumes from its
    last checkpoint under the new grants (or is refused)."""

    def __init__(self, principal: str) -> None:
        self.principal = principal
        super().__init__(
            f"the permissions of {principal!r} changed; resume from the last checkpoint"
        )


class QuotaExceeded(EventStoreError):
    def __init__(self, principal: str, quota: str, limit: float, retry_after_s: float) -> None:
        self.principal = principal
        self.quota = quota
        self.limit = limit
        self.retry_after_s = retry_after_s
        super().__init__(
            f"principal {principal!r} is over its quota {quota} ({limit:.10g}); "
            f"retry in {retry_after_s:.2f} s"
        )


@dataclass(frozen=True, slots=True)
class Quotas:
    """A principal's own quotas (a burst defaults to one second's worth of its rate). A rate or
    bound left None is the server's default for authenticated principals, if it has one."""

    #: sustained appended events per second
    append_events_per_s: float | None = None
    #: events that may be appended at once above the sustained rate
    append_burst: float | None = None
    #: sustained bytes of Append requests per second, as received (before decoding)
    append_bytes_per_s: float | None = None
    #: bytes that may be appended at once above the sustained rate
    append_bytes_burst: float | None = None
    #: open Subscribe streams at a time
    max_subscriptions: int | None = None
    #: calls in flight at a time, every RPC but Subscribe (bounded by `max_subscriptions`)
    max_calls_in_flight: int | None = None
    #: calls per second, whatever the RPC (a stream counts when it opens)
    requests_per_s: float | None = None
    #: calls that may come at once above the sustained rate
    requests_burst: float | None = None
    #: sustained bytes of events sent by ReadAggregate per second (reads slow down beyond it)
    read_bytes_per_s: float | None = None
    #: bytes that may be read at once above the sustained rate
    read_bytes_burst: float | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    #: operation -> aggregate types it may touch ("*": all)
    grants: Mapping[Operation, frozenset[str]] = field(default_factory=dict)
    quotas: Quotas = Quotas()
    #: False only when authentication is turned off: events then carry no principal
    authenticated: bool = True

    def may(self, operation: Operation, aggregate_type: str) -> bool:
        types = self.grants.get(operation, frozenset())
        return ANY_TYPE in types or aggregate_type in types

    def require(self, operation: Operation, aggregate_type: str) -> None:
        if not self.may(operation, aggregate_type):
            raise PermissionDenied(self.name, operation, aggregate_type)

    def sees(self, aggregate_type: str) -> bool:
        """Whether some grant already lets it learn which aggregates of `aggregate_type` exist
        (reading, querying or subscribing to them)."""
        return any(self.may(op, aggregate_type) for op in _SEEING)

    def require_existing(
        self, operation: Operation, aggregate_type: str, absent: EventStoreError
    ) -> None:
        """`require` for an existing aggregate named by id. To a principal that may not even
        see its type the answer is `absent`, the error the request gets when the aggregate does
        not exist: otherwise the refusal would tell that the id exists, and its type."""
        if self.may(operation, aggregate_type):
            return
        if self.sees(aggregate_type):
            raise PermissionDenied(self.name, operation, aggregate_type)
        raise absent

    def permitted(self, operation: Operation) -> frozenset[str] | None:
        """The types `operation` is limited to, or None when it may touch every type."""
        types = self.grants.get(operation, frozenset())
        if ANY_TYPE in types:
            return None
        if not types:
            raise PermissionDenied(self.name, operation, ANY_TYPE)
        return types

    def narrow(self, operation: Operation, requested: Iterable[str]) -> frozenset[str] | None:
        """What a query or subscription may see: every requested type must be granted; with
        none requested, the granted ones (None: all)."""
        wanted = frozenset(requested)
        for aggregate_type in sorted(wanted):
            self.require(operation, aggregate_type)
        return wanted or self.permitted(operation)


#: The operations that show which aggregates of a type exist.
_SEEING = (Operation.READ, Operation.QUERY, Operation.SUBSCRIBE)

#: When authentication is explicitly turned off: everything allowed, nothing recorded.
UNRESTRICTED = Principal(
    "anonymous",
    {op: frozenset({ANY_TYPE}) for op in Operation},
    authenticated=False,
)


def hash_key(api_key: str) -> str:
    """How an API key is stored: keys are long random tokens, so one SHA-256 is enough (a slow
    password hash would only cost latency on every call)."""
    return "sha256:" + hashlib.sha256(api_key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    principals: Mapping[str, Principal]
    #: "sha256:<hex>" of each key -> principal name
    keys: Mapping[str, str]
    #: certificate identity (subject common name or a SAN) -> principal name
    certificates: Mapping[str, str]

    def by_key(self, api_key: str) -> Principal | None:
        # A lookup by digest: its timing could only tell about the digest, and a digest does
        # not lead back to a key.
        name = self.keys.get(hash_key(api_key))
        return self.principals[name] if name is not None else None

    def by_certificate(self, identities: Iterable[str]) -> Principal | None:
        for identity in identities:
            name = self.certificates.get(identity)
            if name is not None:
                return self.principals[name]
        return None


class PolicyError(ValueError):
    """The permission file is wrong; the message names the place (principals.<name>.<field>)."""


def parse_policy(document: Any) -> AccessPolicy:
    """Build the policy from the permission file's content (see README, Security)."""
    if not isinstance(document, Mapping) or not isinstance(document.get("principals"), Mapping):
        raise PolicyError("the file needs a 'principals' mapping")
    unknown = set(document) - {"principals"}
    if unknown:
        raise PolicyError(f"unknown top-level keys: {sorted(unknown)}")
    principals: dict[str, Principal] = {}
    keys: dict[str, str] = {}
    certificates: dict[str, str] = {}
    for name, entry in document["principals"].items():
        where = f"principals.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise PolicyError(f"{where}: a name is letters, digits and ._:@/- (max 128)")
        if not isinstance(entry, Mapping):
            raise PolicyError(f"{where}: must be a mapping")
        allowed = {"keys", "certificates", "quotas", *(op.value for op in Operation)}
        if set(entry) - allowed:
            raise PolicyError(f"{where}: unknown keys {sorted(set(entry) - allowed)}")
        for digest in _strings(entry.get("keys", []), f"{where}.keys"):
            if not _HASH.match(digest):
                raise PolicyError(f"{where}.keys: {digest!r} is not sha256:<64 hex digits>")
            if digest in keys:
                raise PolicyError(f"{where}.keys: the same key is listed for {keys[digest]!r}")
            keys[digest] = name
        for identity in _strings(entry.get("certificates", []), f"{where}.certificates"):
            if identity in certificates:
                raise PolicyError(
                    f"{where}.certificates: {identity!r} already identifies "
                    f"{certificates[identity]!r}"
                )
            certificates[identity] = name
        grants = {
            op: frozenset(_strings(entry.get(op.value, []), f"{where}.{op.value}"))
            for op in Operation
        }
        principals[name] = Principal(name, grants, _quotas(entry.get("quotas", {}), where))
    return AccessPolicy(principals, keys, certificates)


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"{where}: must be a list of non-empty strings")
    return value


#: Quotas that count things at a time rather than a rate.
_WHOLE_QUOTAS = {"max_subscriptions", "max_calls_in_flight"}


def _quotas(value: Any, where: str) -> Quotas:
    where = f"{where}.quotas"
    if not isinstance(value, Mapping):
        raise PolicyError(f"{where}: must be a mapping")
    known = {quota.name for quota in fields(Quotas)}
    if set(value) - known:
        raise PolicyError(f"{where}: unknown keys {sorted(set(value) - known)}")
    numbers: dict[str, Any] = {}
    for key, number in value.items():
        if isinstance(number, bool) or not isinstance(number, int | float) or number <= 0:
            raise PolicyError(f"{where}.{key}: must be a positive number")
        if key in _WHOLE_QUOTAS and not isinstance(number, int):
            raise PolicyError(f"{where}.{key}: must be a whole number")
        numbers[key] = number
    return Quotas(**numbers)


def record_principal(request: AppendRequest, principal: Principal) -> AppendRequest:
    """Stamp every event with who appended it. Clients cannot forge it: validation refuses
    metadata keys with the reserved `$` prefix, and this overwrites the key regardless."""
    if not principal.authenticated:
        return request
    return replace(
        request,
        events=tuple(
            replace(event, metadata={**event.metadata, PRINCIPAL_KEY: principal.name})
            for event in request.events
        ),
    )
