"""Bridge cassandra-driver's callback futures to asyncio without blocking the event loop."""

from __future__ import annotations

import asyncio
from typing import Any

from cassandra.cluster import ResponseFuture


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
