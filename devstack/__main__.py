"""`python -m devstack {up|down|status|env} [service ...]`: the only place that picks exit codes."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence

from devstack import stack
from devstack.errors import StackError
from devstack.locations import state_dir

USAGE = "usage: python -m devstack {up|down|status|env} [service ...]"


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] not in ("up", "down", "status", "env"):
        print(USAGE, file=sys.stderr)
        return 2
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[stack] %(message)s"))
    logging.getLogger("devstack").addHandler(handler)
    logging.getLogger("devstack").setLevel(logging.INFO)
    try:
        return run(argv[0], argv[1:])
    except StackError as exc:
        sys.stdout.flush()
        print(f"\n[stack] {exc}", file=sys.stderr)
        return 1


def run(command: str, names: Sequence[str]) -> int:
    if command == "up":
        started = time.monotonic()
        stack.up(names)
        took = time.monotonic() - started
        print(f"[stack] stack ready in {took:.1f} s (state: {state_dir()})", flush=True)
        return 0
    if command == "down":
        # Without names: everything this tool may have started, the fault-test cluster too.
        stack.down(names or ["cassandra", "kafka", "opensearch", "cluster"])
        return 0
    if command == "env":
        for key, value in stack.endpoints(cluster="cluster" in names).items():
            print(f"{key}={value}")
        return 0
    states = stack.status(names)
    for s in states:
        print(status_line(s))
    # 0 only when every service answers, so scripts can wait on it.
    return 0 if all(s.answering for s in states) else 1


def status_line(s: stack.ServiceState) -> str:
    state = "up" if s.answering else "down"
    if s.external:
        return f"{s.name:<19} {state:<5} {s.endpoint:<24} external ({s.external})"
    rss = f"{s.rss_mb:.0f} MB" if s.rss_mb else "-"
    return (
        f"{s.name:<19} {state:<5} {s.endpoint:<24} "
        f"pid {s.pid or '-':<8} rss {rss:<8} log {s.log_file}"
    )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
