"""eventstore-access: issue API keys and check a permissions file before deploying it.

eventstore-access new-key          a new random key (give it to the client) and its hash
                                   (put it in the permissions file)
eventstore-access hash             the hash of a key read from standard input
eventstore-access check FILE       parse FILE as the server would; exit 2 naming the problem
"""

from __future__ import annotations

import argparse
import secrets
import sys
from dataclasses import fields
from pathlib import Path

from eventstore.domain.access import PolicyError, hash_key
from eventstore.policy_file import PolicyFile

#: Recognisable in logs and secret scanners; 32 random bytes behind it.
KEY_PREFIX = "esk_"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="eventstore-access",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("new-key", help="print a new API key and its hash")
    sub.add_parser("hash", help="print the hash of the key on standard input")
    check = sub.add_parser("check", help="validate a permissions file")
    check.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    if args.command == "new-key":
        key = new_key()
        print(f"key:  {key}")
        print(f"hash: {hash_key(key)}")
    elif args.command == "hash":
        key = sys.stdin.read().strip()
        if not key:
            sys.exit("eventstore-access: no key on standard input")
        print(hash_key(key))
    else:
        try:
            policy = PolicyFile.load(args.file).current()
        except PolicyError as exc:
            print(f"eventstore-access: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        for name, principal in sorted(policy.principals.items()):
            grants = ", ".join(
                f"{op.value} {sorted(types)}" for op, types in principal.grants.items() if types
            )
            quotas = ", ".join(
                f"{quota.name} {getattr(principal.quotas, quota.name)}"
                for quota in fields(principal.quotas)
                if getattr(principal.quotas, quota.name) is not None
            )
            print(f"{name}: {grants or 'no grants'}" + (f"; quotas {quotas}" if quotas else ""))


if __name__ == "__main__":
    main()
