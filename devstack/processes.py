"""Background processes that outlive their launcher, recognised later by pid and command line."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

# Starts the command in the background of a throw-away shell, in a new session, so that the
# service is nobody's child: it outlives whoever ran `up` (a test run, a terminal's Ctrl-C)
# and is reaped by init, never left a zombie of ours.
_DETACH = 'exec "$@" >>"$DEVSTACK_LOG" 2>&1 </dev/null & echo $!'


def launch(command: Sequence[str], cwd: Path, env: Mapping[str, str], log_file: Path) -> int:
    """Start `command` detached, its output appended to `log_file`; return its pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    launcher = subprocess.run(
        ["/bin/sh", "-c", _DETACH, "sh", *command],
        cwd=cwd,
        env={**env, "DEVSTACK_LOG": str(log_file)},
        capture_output=True,
        text=True,
        check=True,
        start_new_session=True,
    )
    return int(launcher.stdout.strip())


def terminate_all(pids: Sequence[int], grace_s: float = 60) -> set[int]:
    """SIGTERM to every pid at once, then SIGKILL to those still alive after `grace_s`; the
    pids that had to be killed. At once, not one after another: the last broker of a KRaft
    quorum cannot shut down cleanly once the others are gone (it waited out its 60 s)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(pid_alive(pid) for pid in pids):
        time.sleep(0.2)
    killed = {pid for pid in pids if pid_alive(pid)}
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return killed


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (our child, not yet reaped) counts as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def is_ours(pid: int, home: Path) -> bool:
    """Our processes name our state directory on their command line; a recycled pid does not.

    While a launcher script execs the JVM the command line reads empty for a moment, so an
    empty one is asked again rather than taken for a stranger.
    """
    for _ in range(50):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        if cmdline:
            return str(home).encode() in cmdline
        time.sleep(0.02)
    return False


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False
