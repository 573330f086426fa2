"""Named crash points for tests: off unless EVENTSTORE_FAILPOINTS names one.

``EVENTSTORE_FAILPOINTS="append.after_commit=crash"`` makes the process kill itself with
SIGKILL the moment an append has committed in Cassandra and before anything is published, so
that a test can prove nothing committed is lost at exactly that point.
"""

from __future__ import annotations

import os
import signal
import sys


class Failpoints:
    def __init__(self, spec: str = "") -> None:
        self._actions: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, _, action = item.partition("=")
            if action not in ("crash",):
                raise ValueError(f"unknown failpoint action {action!r} in {item!r}")
            self._actions[name] = action

    def hit(self, name: str) -> None:
        if self._actions.get(name) == "crash":
            sys.stderr.write(f"failpoint {name}: crashing (SIGKILL)\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
