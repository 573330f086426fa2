"""Authentication: which principal is calling, from an API key (`authorization: Bearer <key>`)
and/or the identity in the client certificate that mutual TLS verified."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from eventstore.domain.access import (
    UNRESTRICTED,
    AccessPolicy,
    GrantsChanged,
    Principal,
    Unauthenticated,
)

#: The subject common name and the subject alternative names of a verified client certificate.
_CERTIFICATE_PROPERTIES = ("x509_common_name", "x509_subject_alternative_name")


class Authenticator:
    """`policy` returns the current policy (the file may be reloaded at any time); None means
    authentication was explicitly turned off and every caller is `UNRESTRICTED`."""

    def __init__(self, policy: Callable[[], AccessPolicy] | None) -> None:
        self._policy = policy

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

    def authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        if self._policy is None:
            return UNRESTRICTED
        policy = self._policy()
        key = _bearer_token(context)
        identities = _certificate_identities(context)
        by_certificate = policy.by_certificate(identities) if identities else None
        if key is not None:
            principal = policy.by_key(key)
            if principal is None:
                raise Unauthenticated("the API key is not valid (unknown, or removed)")
            if by_certificate is not None and by_certificate.name != principal.name:
                raise Unauthenticated(
                    "the API key and the client certificate identify different principals"
                )
            return principal
        if by_certificate is not None:
            return by_certificate
        if identities:
            raise Unauthenticated("the client certificate's identity is not a known principal")
        raise Unauthenticated(
            "no credential: send 'authorization: Bearer <API key>' or a client certificate"
        )


def _bearer_token(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    values = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
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


def _certificate_identities(context: grpc.aio.ServicerContext[Any, Any]) -> list[str]:
    # Only present when the handshake verified a client certificate (mutual TLS).
    auth_context = context.auth_context() or {}
    identities: list[str] = []
    for name in _CERTIFICATE_PROPERTIES:
        for raw in auth_context.get(name, ()):
            value = raw.decode() if isinstance(raw, bytes) else str(raw)
            if value not in identities:
                identities.append(value)
    return identities
