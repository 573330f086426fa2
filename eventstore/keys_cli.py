"""eventstore-keys: the master key that wraps the data subjects' keys (personal data).

eventstore-keys new-master-key   print a new master key (32 random bytes, base64): store it
                                 in a Secret, mount it as EVENTSTORE_MASTER_KEY_FILE
eventstore-keys rotate           re-wrap every subject key under EVENTSTORE_MASTER_KEY_FILE,
                                 unwrapping with EVENTSTORE_PREVIOUS_MASTER_KEY_FILE; events
                                 are not touched. Cassandra from EVENTSTORE_CASSANDRA_*.

Rotation: (1) give every server the new key as EVENTSTORE_MASTER_KEY_FILE and the old one as
EVENTSTORE_PREVIOUS_MASTER_KEY_FILE; (2) run `eventstore-keys rotate` with the same two;
(3) remove the old key from the servers and destroy it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import secrets
import sys

from pydantic import ValidationError

from eventstore.config import CassandraSettings, PersonalDataSettings
from eventstore.domain.errors import StorageUnavailable
from eventstore.domain.personal import KEY_BYTES, PersonalDataError
from eventstore.storage.connection import CassandraConnection
from eventstore.storage.subject_keys import CassandraSubjectKeys
from eventstore.usecases.append import utc_now_ms
from eventstore.usecases.personal import Rotation, rotate_master_key


def new_master_key() -> str:
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


async def rotate(cassandra: CassandraSettings, personal: PersonalDataSettings) -> Rotation:
    masters = personal.master_keys()
    if masters is None:
        raise ValueError("EVENTSTORE_MASTER_KEY_FILE is not set: the key to re-wrap under")
    connection = await CassandraConnection.open(cassandra)
    try:
        keys = await CassandraSubjectKeys.create_store(connection)
        return await rotate_master_key(keys, masters, utc_now_ms())
    finally:
        await connection.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="eventstore-keys",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("new-master-key", help="print a new master key (base64)")
    sub.add_parser("rotate", help="re-wrap every subject key under the current master key")
    args = parser.parse_args(argv)
    if args.command == "new-master-key":
        print(new_master_key())
        return
    try:
        done = asyncio.run(rotate(CassandraSettings(), PersonalDataSettings()))
    except (ValidationError, ValueError) as exc:
        print(f"eventstore-keys: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except (StorageUnavailable, PersonalDataError) as exc:
        print(f"eventstore-keys: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(
        f"eventstore-keys: {done.rewrapped} subject keys re-wrapped, {done.current} were "
        f"already, {done.erased} erased, {done.skipped} changed meanwhile (run again)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
