"""eventstore-replay entry point. The replay CLI is not built yet (issue #6); say so plainly."""

import sys


def main() -> None:
    print("eventstore-replay: not implemented yet (see issue #6)", file=sys.stderr)
    raise SystemExit(2)
