"""eventstore-migrate: create what the store needs (keyspace and tables), idempotently."""

from __future__ import annotations

import asyncio
import sys
import time

from eventstore.config import CassandraSettings
from eventstore.domain.errors import StorageUnavailable
from eventstore.storage.cassandra import apply_schema


async def migrate(cassandra: CassandraSettings) -> None:
    await apply_schema(cassandra)


def main() -> None:
    settings = CassandraSettings()
    started = time.monotonic()
    try:
        asyncio.run(migrate(settings))
    except StorageUnavailable as exc:
        print(
            f"eventstore-migrate: {exc} (is Cassandra up? `make services-status`)", file=sys.stderr
        )
        raise SystemExit(1) from exc
    print(
        f"eventstore-migrate: keyspace {settings.keyspace!r} ready "
        f"({time.monotonic() - started:.1f} s)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
