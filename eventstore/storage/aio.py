"""Bridge cassandra-driver's callback futures to asyncio without blocking the event loop, and
translate its errors (one place: every adapter of ours runs its statements through `execute`)."""

from __future__ import annotations

import asyncio
from typing import Any

from cassandra import DriverException, OperationTimedOut
from cassandra.cluster import NoHostAvailable, ResponseFuture, Session

from eventstore.domain.errors import StorageUnavailable

#: What the driver raises when Cassandra did not answer (NoHostAvailable is not a
#: DriverException): the caller may retry.
DRIVER_ERRORS = (DriverException, OperationTimedOut, NoHostAvailable)


def _settle(
    future: asyncio.Future[list[Any]], rows: list[Any] | None, exc: BaseException | None
) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(rows if rows is not None else [])


def wrap(response: ResponseFuture) -> asyncio.Future[list[Any]]:
    """An asyncio future for the first page of `response` (the driver's I/O thread settles it)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[list[Any]] = loop.create_future()
    response.add_callbacks(
        lambda rows: loop.call_soon_threadsafe(_settle, future, rows, None),
        lambda exc: loop.call_soon_threadsafe(_settle, future, None, exc),
    )
    return future


async def execute(session: Session, statement: Any, params: Any = None) -> list[Any]:
    """Run a statement; the first page of rows. Driver errors become StorageUnavailable."""
    try:
        return await wrap(session.execute_async(statement, params))
    except DRIVER_ERRORS as exc:
        raise StorageUnavailable(f"Cassandra: {type(exc).__name__}") from exc
