"""One service of the stack: how to configure, start, probe and recognise it."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from devstack.locations import state_dir
from devstack.processes import is_ours, pid_alive


@dataclass(frozen=True)
class Service:
    name: str
    env_var: str
    """An endpoint in this variable means "use that cluster": not started, not stopped here
    (empty for the fault-test cluster's nodes, which are always ours)."""
    default_endpoint: str
    ports: tuple[int, ...]
    """Every port the process binds: one held by a stranger stops `up` before it starts."""
    answers: Callable[[str], bool]
    prepare: Callable[[Path, Path], list[str]]
    """(state dir, java home) -> command line; writes configuration, resolves jars."""
    extra_env: Callable[[Path, Path], dict[str, str]] = field(default=lambda _s, _j: {})
    system_log: str | None = None
    """The service's own log under `logs/`, shown with stdout when a start fails."""
    host: str = "127.0.0.1"
    """The loopback address it binds (cluster nodes have one each, on the same ports)."""

    @property
    def external(self) -> str | None:
        return (os.environ.get(self.env_var) or None) if self.env_var else None

    @property
    def endpoint(self) -> str:
        return self.external or self.default_endpoint

    @property
    def home(self) -> Path:
        return state_dir() / self.name

    @property
    def pid_file(self) -> Path:
        return self.home / "pid"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "stdout.log"

    def running_pid(self) -> int | None:
        """The recorded pid if that process is alive and is still ours; cleans stale files."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if pid_alive(pid) and is_ours(pid, self.home):
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None
