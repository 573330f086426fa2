"""The supervisor of EVENTSTORE_PROCESSES > 1 (eventstore/workers.py), with small Python scripts
as workers: restarts, a configuration error, giving up, signals forwarded, the shared port."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from eventstore.config import ConfigError, ServerSettings, load
from eventstore.workers import (
    MAX_EARLY_DEATHS,
    Supervisor,
    reserve,
    restart_delay,
    worker_env,
)

#: A worker that records its start (and, once it can be stopped, that it is ready), stops on
#: SIGTERM (exit 0) and records each SIGHUP; env BEHAVIOUR makes it misbehave.
WORKER = """
import os, signal, sys, time
from pathlib import Path
out = Path(os.environ["OUT"])
me = f"{os.environ['EVENTSTORE_WORKER']}-{os.getpid()}"
(out / f"started-{me}").touch()
behaviour = os.environ.get("BEHAVIOUR", "")
if behaviour == f"config-error-{os.environ['EVENTSTORE_WORKER']}":
    sys.exit(2)
if behaviour == "fail":
    sys.exit(1)
if behaviour == "die-once-0" and me.startswith("0-") and not (out / "died").exists():
    (out / "died").touch()
    os.kill(os.getpid(), signal.SIGKILL)
signal.signal(signal.SIGTERM, signal.SIG_IGN if behaviour == "stubborn" else lambda *_: sys.exit(0))
signal.signal(signal.SIGHUP, lambda *_: (out / f"hup-{me}").touch())
(out / f"ready-{me}").touch()
while True:
    time.sleep(0.05)
"""
COMMAND = (sys.executable, "-c", WORKER)


def supervisor(tmp_path: Path, behaviour: str = "", **settings: object) -> Supervisor:
    env = {**os.environ, "OUT": str(tmp_path), "BEHAVIOUR": behaviour}
    return Supervisor(
        ServerSettings.model_validate({"auth_disabled": True, "processes": 2, **settings}),
        env,
        COMMAND,
        first_backoff_s=0.01,
        kill_after_grace_s=0.5,
    )


def marks(tmp_path: Path, kind: str) -> list[str]:
    return sorted(p.name.removeprefix(f"{kind}-") for p in tmp_path.glob(f"{kind}-*"))


async def until(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {within_s} s"
        await asyncio.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_workers_start_and_stop_on_sigterm_with_status_0(tmp_path: Path) -> None:
    sup = supervisor(tmp_path)
    running = asyncio.create_task(sup.run())
    await until(lambda: len(marks(tmp_path, "ready")) == 2)
    pids = sup.pids
    assert sorted(pids) == [0, 1]
    sup.stop()
    assert await asyncio.wait_for(running, 10) == 0
    assert not any(alive(pid) for pid in pids.values())


async def test_a_dead_worker_is_restarted_and_the_others_keep_running(tmp_path: Path) -> None:
    sup = supervisor(tmp_path, "die-once-0")
    running = asyncio.create_task(sup.run())
    await until(lambda: len(marks(tmp_path, "ready")) == 2)
    started = marks(tmp_path, "started")
    assert [m.split("-")[0] for m in started] == ["0", "0", "1"], started  # 0 died, restarted
    assert sup.pids[0] != int(started[0].split("-")[1])
    sup.stop()
    assert await asyncio.wait_for(running, 10) == 0


async def test_a_configuration_error_stops_everything_with_status_2(tmp_path: Path) -> None:
    sup = supervisor(tmp_path, "config-error-1")
    status = await asyncio.wait_for(sup.run(), 10)
    assert status == 2
    # Worker 0 may be stopped before it got as far as to record its start; none started twice.
    started = [m.split("-")[0] for m in marks(tmp_path, "started")]
    assert "1" in started
    assert len(started) == len(set(started)), "no restart"
    assert sup.pids == {}


async def test_workers_that_keep_failing_make_it_give_up_with_status_1(tmp_path: Path) -> None:
    sup = supervisor(tmp_path, "fail", processes=1)
    assert await asyncio.wait_for(sup.run(), 20) == 1
    assert len(marks(tmp_path, "started")) == MAX_EARLY_DEATHS + 1


async def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace_period(
    tmp_path: Path,
) -> None:
    sup = supervisor(tmp_path, "stubborn", grace_period_s=0.5)
    running = asyncio.create_task(sup.run())
    await until(lambda: len(marks(tmp_path, "ready")) == 2)
    pids = sup.pids
    sup.stop()
    assert await asyncio.wait_for(running, 10) == 1
    assert not any(alive(pid) for pid in pids.values())


async def test_sighup_reaches_every_worker_when_there_is_a_permissions_file(
    tmp_path: Path,
) -> None:
    permissions = tmp_path / "permissions.yaml"
    permissions.write_text("principals: {}\n")
    sup = supervisor(tmp_path, permissions_file=permissions, auth_disabled=False)
    running = asyncio.create_task(sup.run())
    await until(lambda: len(marks(tmp_path, "ready")) == 2)
    sup.reload()
    await until(lambda: len(marks(tmp_path, "hup")) == 2)
    sup.stop()
    assert await running == 0


async def test_sighup_is_not_forwarded_without_a_permissions_file(tmp_path: Path) -> None:
    # The workers install no SIGHUP handler then: it would kill them.
    sup = supervisor(tmp_path)
    running = asyncio.create_task(sup.run())
    await until(lambda: len(marks(tmp_path, "ready")) == 2)
    sup.reload()
    await asyncio.sleep(0.3)
    assert marks(tmp_path, "hup") == []
    sup.stop()
    assert await running == 0


def test_port_0_is_reserved_once_and_shared() -> None:
    address, held = reserve("127.0.0.1:0")
    assert held is not None
    with held:
        host, _, port = address.rpartition(":")
        assert host == "127.0.0.1"
        assert int(port) == held.getsockname()[1] != 0
        # Each worker binds and listens on it (gRPC sets SO_REUSEPORT as well).
        workers = [socket.socket() for _ in range(2)]
        for sock in workers:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", int(port)))
            sock.listen()
        with socket.create_connection(("127.0.0.1", int(port)), timeout=2):
            pass
        for sock in workers:
            sock.close()


def test_a_concrete_port_is_left_as_it_is() -> None:
    assert reserve("0.0.0.0:50051") == ("0.0.0.0:50051", None)


def test_workers_run_one_process_each_and_leave_the_metrics_port_to_the_supervisor() -> None:
    base = {"EVENTSTORE_PROCESSES": "4", "EVENTSTORE_METRICS_PORT": "9464", "PATH": "/bin"}
    stale = {**base, "PROMETHEUS_MULTIPROC_DIR": "/stale", "EVENTSTORE_HTTP_LISTEN": "h:0"}
    env = worker_env(stale, "h:1", "h:2", None, http_listen="h:3")
    assert env["EVENTSTORE_PROCESSES"] == "1"
    assert env["EVENTSTORE_METRICS_PORT"] == "0"
    assert (env["EVENTSTORE_LISTEN"], env["EVENTSTORE_HEALTH_LISTEN"]) == ("h:1", "h:2")
    assert env["EVENTSTORE_HTTP_LISTEN"] == "h:3"  # the port reserved for all, not port 0
    assert "PROMETHEUS_MULTIPROC_DIR" not in env
    assert worker_env(base, "h:1", "", "/m", http_listen="")["PROMETHEUS_MULTIPROC_DIR"] == "/m"


def test_restarts_back_off_up_to_a_bound() -> None:
    assert [restart_delay(n) for n in range(7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0]


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_processes_must_be_a_positive_integer(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("EVENTSTORE_AUTH_DISABLED", "true")
    monkeypatch.setenv("EVENTSTORE_PROCESSES", value)
    with pytest.raises(ConfigError, match="EVENTSTORE_PROCESSES"):
        load(ServerSettings)


async def test_a_worker_that_cannot_be_started_stops_everything_with_status_1(
    tmp_path: Path,
) -> None:
    settings = ServerSettings.model_validate({"auth_disabled": True, "processes": 2})
    sup = Supervisor(settings, dict(os.environ), [str(tmp_path / "missing")])
    assert await asyncio.wait_for(sup.run(), 10) == 1
