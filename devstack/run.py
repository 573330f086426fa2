"""`make run`: the server and the indexer in the foreground, as two processes.

Ctrl-C (or SIGTERM) stops both cleanly; if either exits, the other is stopped too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping

COMMANDS = {
    "server": [sys.executable, "-m", "eventstore.server"],
    "indexer": [sys.executable, "-m", "indexer.main"],
}


def environment(base: Mapping[str, str]) -> dict[str, str]:
    """The server's and the indexer's: `base` (the user's), with local-development defaults."""
    env = {**base}
    env.setdefault("EVENTSTORE_LOG_FORMAT", "console")
    env.setdefault("EVENTSTORE_INDEXER_LOG_FORMAT", "console")
    # One server process per core (EVENTSTORE_PROCESSES=1 to profile or debug a single one).
    env.setdefault("EVENTSTORE_PROCESSES", str(os.cpu_count() or 1))
    # The REST/JSON face beside gRPC (README, "REST/JSON"); EVENTSTORE_HTTP_LISTEN= turns it off.
    env.setdefault("EVENTSTORE_HTTP_LISTEN", "127.0.0.1:8080")
    if "EVENTSTORE_PERMISSIONS_FILE" not in env:
        # A local stack on loopback: no keys to hand out, so authentication is explicitly off
        # (the server warns). Set EVENTSTORE_PERMISSIONS_FILE to try it with authentication.
        env.setdefault("EVENTSTORE_AUTH_DISABLED", "true")
    return env


def main() -> int:
    env = environment(os.environ)
    children = {name: subprocess.Popen(cmd, env=env) for name, cmd in COMMANDS.items()}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(
        f"[run] server ({env['EVENTSTORE_PROCESSES']} processes) on 127.0.0.1:50051 (gRPC)"
        + (f" and {env['EVENTSTORE_HTTP_LISTEN']} (REST)" if env["EVENTSTORE_HTTP_LISTEN"] else "")
        + ", and indexer started; Ctrl-C stops both",
        file=sys.stderr,
        flush=True,
    )
    while not stopping and all(child.poll() is None for child in children.values()):
        time.sleep(0.2)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for name, child in children.items():
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            print(f"[run] {name} did not stop in 30 s; killing it", file=sys.stderr)
            child.kill()
            child.wait()
    codes = {name: child.returncode for name, child in children.items()}
    failed = {n: c for n, c in codes.items() if c not in (0, -signal.SIGTERM)}
    if failed and not stopping:
        print(f"[run] stopped because a process exited: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
