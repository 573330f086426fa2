"""OpenSearch errors are classified by what the caller should do, not all as an outage."""

from __future__ import annotations

import pytest
from opensearchpy.exceptions import ConnectionError as OpenSearchConnectionError
from opensearchpy.exceptions import ConnectionTimeout, RequestError, TransportError

from eventstore.domain.errors import BackendRejected, StorageUnavailable
from eventstore.search.opensearch import translate


@pytest.mark.parametrize(
    "error",
    [
        OpenSearchConnectionError("N/A", "refused", None),
        ConnectionTimeout("TIMEOUT", "read timed out", None),
        TransportError(429, "circuit_breaking_exception", {}),
        TransportError(500, "internal", {}),
        TransportError(503, "no shard available", {}),
    ],
    ids=repr,
)
def test_unreachable_slow_or_overloaded_is_retryable(error: TransportError) -> None:
    assert isinstance(translate(error), StorageUnavailable)


@pytest.mark.parametrize(
    "error",
    [
        RequestError(400, "parsing_exception", {}),
        TransportError(401, "security_exception", {}),
        TransportError(404, "index_not_found_exception", {}),
        TransportError(413, "too large", {}),
    ],
    ids=repr,
)
def test_a_refused_request_is_not_retryable(error: TransportError) -> None:
    translated = translate(error)
    assert isinstance(translated, BackendRejected)
    assert not isinstance(translated, StorageUnavailable)
