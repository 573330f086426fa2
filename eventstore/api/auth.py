"""Authentication: which principal is calling, from an API key (`authorization: Bearer <key>`)
and/or the identity in the client certificate that mutual TLS verified."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import grpc

from eventstore.domain.access import (
    UNRESTRICTED,
    AccessPolicy,
    GrantsChanged,
    Principal,
    Unauthenticated,
)

NO_CREDENTIAL = "no credential: send 'authorization: Bearer <API key>' or a client certificate"
INVALID_KEY = "the API key is not valid (unknown, or removed)"

#: Where gRPC puts each kind of name of a verified client certificate (its auth context).
_CERTIFICATE_PROPERTIES = {
    "cn": "x509_common_name",
    "dns": "peer_dns",
    "uri": "peer_uri",
    "email": "peer_email",
    "ip": "peer_ip",
}


class Authenticator:
    """`policy` returns the current policy (the file may be reloaded at any time); None means
    authentication was explicitly turned off and every caller is `UNRESTRICTED`."""

    def __init__(
        self,
        policy: Callable[[], AccessPolicy] | None,
        identity_kinds: Iterable[str] = ("cn", "dns"),
    ) -> None:
        self._policy = policy
        # Only the configured kinds: an email or URI name equal to a principal's certificate
        # name must not log in as it when the operator meant host names.
        self._properties = tuple(_CERTIFICATE_PROPERTIES[kind] for kind in identity_kinds)

    def policy(self) -> AccessPolicy | None:
        """The current policy object: a new one after every reload."""
        return self._policy() if self._policy is not None else None

    def recheck(self, context: grpc.aio.ServicerContext[Any, Any], principal: Principal) -> None:
        """For a long-lived stream, after a reload: is the caller still who it was, with the
        same grants? A removed key ends the stream as UNAUTHENTICATED; changed grants end it
        (ABORTED) so that it is resumed, and narrowed, anew."""
        fresh = self.authenticate(context)
        if fresh.name != principal.name or fresh.grants != principal.grants:
            raise GrantsChanged(principal.name)

    def refuse_early(
        self, metadata: Iterable[tuple[str, Any]] | None, certificates: bool
    ) -> Unauthenticated | None:
        """Why a call cannot be authenticated, judged from its headers alone (None: it may
        be), so it is refused before its request is read. With client certificates possible
        (mutual TLS), a call without an API key is left to `authenticate`."""
        if self._policy is None:
            return None
        try:
            key = bearer_token(metadata)
        except Unauthenticated as exc:
            return exc
        if key is None:
            return None if certificates else Unauthenticated(NO_CREDENTIAL)
        if self._policy().by_key(key) is None:
            return Unauthenticated(INVALID_KEY)
        return None

    def authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        if self._policy is None:
            return UNRESTRICTED
        policy = self._policy()
        key = _bearer_token(context)
        identities = _certificate_identities(context, self._properties)
        by_certificate = policy.by_certificate(identities) if identities else None
        if key is not None:
            principal = policy.by_key(key)
            if principal is None:
                raise Unauthenticated(INVALID_KEY)
            if by_certificate is not None and by_certificate.name != principal.name:
                raise Unauthenticated(
                    "the API key and the client certificate identify different principals"
                )
            return principal
        if by_certificate is not None:
            return by_certificate
        if identities:
            raise Unauthenticated("the client certificate's identity is not a known principal")
        raise Unauthenticated(NO_CREDENTIAL)


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The API key of `authorization: Bearer <key>` in the call's headers (None: no header)."""
    values = [v for k, v in metadata or () if k == "authorization"]
    if not values:
        return None
    # Several: refused rather than picking one, which a proxy in between might pick otherwise.
    if len(values) > 1:
        raise Unauthenticated("send one authorization header, not several")
    (value,) = values
    scheme, _, token = str(value).partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the authorization header must be 'Bearer <API key>'")
    return token.strip()


def _bearer_token(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    return bearer_token(context.invocation_metadata())


def _certificate_identities(
    context: grpc.aio.ServicerContext[Any, Any], properties: Iterable[str]
) -> list[str]:
    # Only present when the handshake verified a client certificate (mutual TLS).
    auth_context = context.auth_context() or {}
    identities: list[str] = []
    for name in properties:
        for raw in auth_context.get(name, ()):
            value = raw.decode() if isinstance(raw, bytes) else str(raw)
            if value not in identities:
                identities.append(value)
    return identities
