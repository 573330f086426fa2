"""eventstore-indexer entry point. The indexer is not built yet (issue #5); say so plainly."""

import sys


def main() -> None:
    print("eventstore-indexer: not implemented yet (see issue #5)", file=sys.stderr)
    raise SystemExit(2)
