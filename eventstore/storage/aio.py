"""Bridge cassandra-driver's callback futures to asyncio without blocking the event loop, and
translate its errors (one place: every adapter of ours prepares its statements with `prepare`
and runs them through `execute`, or calls the driver inside `translated`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

from cassandra import DriverException, OperationTimedOut
from cassandra.cluster import NoHostAvailable, ResponseFuture, Session
from cassandra.query import PreparedStatement

from eventstore.domain.errors import StorageUnavailable

#: What the driver raises when Cassandra did not answer (NoHostAvailable is not a
#: DriverException): the caller may retry.
DRIVER_ERRORS = (DriverException, OperationTimedOut, NoHostAvailable)


@contextlib.contextmanager
def translated(what: str | None = None) -> Iterator[None]:
    """Driver errors raised inside become StorageUnavailable (`what` failed, or the error's
    type): no cassandra exception crosses into the domain."""
    try:
        yield
    except DRIVER_ERRORS as exc:
        raise StorageUnavailable(what or f"Cassandra: {type(exc).__name__}") from exc


def prepare(session: Session, query: str) -> PreparedStatement:
    """Prepare a statement (blocking: adapters prepare off the event loop)."""
    with translated():
        return session.prepare(query)


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
    """An asyncio future for every row of `response` (the driver's I/O thread settles it).

    The driver pages results (5,000 rows by default) and hands over one page per callback:
    further pages are fetched here, so a caller never mistakes the first page for the whole
    answer (a 10,000-event read page once stopped at 5,000).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[list[Any]] = loop.create_future()
    collected: list[Any] = []

    def on_page(rows: list[Any] | None) -> None:
        if rows:
            collected.extend(rows)
        if response.has_more_pages and not future.cancelled():
            response.start_fetching_next_page()  # calls on_page (or on_error) again
            return
        loop.call_soon_threadsafe(_settle, future, collected, None)

    response.add_callbacks(
        on_page, lambda exc: loop.call_soon_threadsafe(_settle, future, None, exc)
    )
    return future


async def execute(session: Session, statement: Any, params: Any = None) -> list[Any]:
    """Run a statement; all its rows. Driver errors become StorageUnavailable."""
    with translated():
        return await wrap(session.execute_async(statement, params))
