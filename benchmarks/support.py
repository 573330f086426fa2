"""Helpers shared by the benchmark scripts: ports, the payload, per-process CPU from /proc, the
local stack's pids, and the facts of the machine and the checkout a run was taken on."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack import stack

PAYLOAD = {"customer": "c-123", "total": 42.5, "items": [{"sku": "A-1", "qty": 2}] * 3}
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def read_stat(text: str) -> tuple[int, float]:
    """(ppid, CPU seconds used) from the text of a /proc/<pid>/stat.

    The command name is in parentheses and may itself hold spaces or parentheses: the fields
    are counted from its last closing one (state is field 3, ppid 4, utime 14, stime 15)."""
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def process_table(proc: Path = PROC) -> dict[int, tuple[int, float]]:
    """Every process: pid -> (ppid, CPU seconds). Processes that end while it reads are left out."""
    table = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                table[int(entry.name)] = read_stat((entry / "stat").read_text())
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile (or not a process directory)
    return table


def with_descendants(root: int, table: dict[int, tuple[int, float]]) -> list[int]:
    """`root` and every process below it (a server that forks workers is all of them)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], deque([root])
    while todo:
        pid = todo.popleft()
        if pid in table:
            found.append(pid)
            todo.extend(children.get(pid, ()))
    return found


@dataclass(frozen=True)
class Watched:
    """A process whose CPU is reported; `tree`: with every descendant (not for this process,
    whose children are the server and the indexer)."""

    name: str
    pid: int
    tree: bool = True


CpuSnapshot = dict[str, dict[int, float]]


def cpu_snapshot(watched: list[Watched], proc: Path = PROC) -> CpuSnapshot:
    """Per watched name, the CPU seconds of each of its processes now."""
    table = process_table(proc)
    return {
        w.name: {
            pid: table[pid][1]
            for pid in (with_descendants(w.pid, table) if w.tree else [w.pid])
            if pid in table
        }
        for w in watched
    }


def cpu_ms_per_append(
    before: CpuSnapshot, after: CpuSnapshot, appends: int
) -> dict[str, float | None]:
    """CPU milliseconds per append of each watched name between two snapshots. A process that
    started meanwhile counts from zero; one that ended meanwhile is missing from `after`, and
    so is what it used (the stack's and the server's processes live through a load)."""
    used = {
        name: sum(seconds - before.get(name, {}).get(pid, 0.0) for pid, seconds in pids.items())
        for name, pids in after.items()
    }
    return {name: s * 1000 / appends if appends else None for name, s in used.items()}


def stack_pids() -> dict[str, int]:
    """The local stack's services that are running, by name (cassandra, kafka, opensearch)."""
    pids = {}
    for service in stack.SERVICES:
        pid = service.running_pid()
        if pid is not None:
            pids[service.name] = pid
    return pids


def machine() -> dict[str, Any]:
    """What a figure depends on besides the code: cores, CPU model, memory, load."""
    model = ""
    memory_kb = 0
    for line in (PROC / "cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    for line in (PROC / "meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kb = int(line.split()[1])
    return {
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }


def git_commit() -> dict[str, Any]:
    """The checkout's commit, and whether the work tree differs from it."""
    git = shutil.which("git")
    if git is None:
        return {"commit": None, "dirty": None}

    def run(*args: str) -> str:
        return subprocess.run(  # noqa: S603 - a fixed git command, no shell
            [git, "-C", str(REPO), *args], capture_output=True, text=True, check=False
        ).stdout.strip()

    return {"commit": run("rev-parse", "HEAD") or None, "dirty": bool(run("status", "--porcelain"))}
