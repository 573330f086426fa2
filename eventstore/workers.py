"""eventstore-server with EVENTSTORE_PROCESSES > 1: a supervisor of that many server processes
on one port.

One Python process serves on about one core (the GIL). To use more, the supervisor starts fresh
interpreters (`python -m eventstore.server`, each with EVENTSTORE_PROCESSES=1) rather than forks:
no gRPC or Cassandra driver state (threads, sockets, event loops) can be inherited half-made, and
the supervisor itself never creates any. Each worker is a full server (its own connections,
writer journal, quotas and subscription bounds); they all listen on one port with SO_REUSEPORT,
and the kernel spreads new connections among them. A worker that dies is restarted; what it
committed but had not published is published by another, which takes over its journal once its
heartbeat stops (usecases/publish.py), as for a crashed replica.

The supervisor forwards SIGTERM/SIGINT (stop) and SIGHUP (reload the permissions file), and
serves the workers' metrics together (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence

import prometheus_client
import structlog
from prometheus_client import multiprocess

from eventstore.config import ServerSettings

log = structlog.get_logger(__name__)

WORKER_COMMAND = (sys.executable, "-m", "eventstore.server")
#: A worker exiting with this code refused its configuration (eventstore.server.main): it would
#: refuse it again, so the whole server stops with it instead of restarting it.
CONFIG_ERROR = 2
#: A worker that ran this long before it died had started well: its next restart is immediate
#: again, and it does not count towards giving up.
STABLE_AFTER_S = 30.0
#: Workers of one slot dying early this many times in a row: the supervisor gives up (exit 1).
MAX_EARLY_DEATHS = 5
#: At shutdown, workers still running this long after the grace period are killed (the chart's
#: terminationGracePeriodSeconds gives the pod as long).
KILL_AFTER_GRACE_S = 10.0
#: Exit statuses of a worker that was asked to stop and did.
STOPPED = (0, -signal.SIGTERM)


def restart_delay(early_deaths: int, first_s: float = 0.5, max_s: float = 10.0) -> float:
    """Backoff before restarting a worker that died early `early_deaths` times in a row."""
    if early_deaths <= 0:
        return 0.0
    return min(first_s * float(2 ** (early_deaths - 1)), max_s)


def reserve(address: str) -> tuple[str, socket.socket | None]:
    """`address` with a concrete port. Port 0 is bound here (with SO_REUSEPORT, as gRPC binds) to
    pick the one port every worker then shares; the socket is held, so the port stays ours while
    workers restart. It never listens: connections go to the workers' listening sockets only."""
    host, _, port = address.rpartition(":")
    if port != "0":
        return address, None
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        host.strip("[]") or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    held = socket.socket(family, kind, proto)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    held.bind(sockaddr)
    return f"{host}:{held.getsockname()[1]}", held


def worker_env(
    base: Mapping[str, str],
    listen: str,
    health_listen: str,
    metrics_dir: str | None,
    *,
    http_listen: str,
) -> dict[str, str]:
    """The environment of every worker (the supervisor adds each one's EVENTSTORE_WORKER)."""
    env = {
        **base,
        "EVENTSTORE_PROCESSES": "1",
        "EVENTSTORE_LISTEN": listen,
        "EVENTSTORE_HEALTH_LISTEN": health_listen,
        # The REST face shares its port like the gRPC one (each worker forwards to itself).
        "EVENTSTORE_HTTP_LISTEN": http_listen,
        # N processes cannot each bind the metrics port: the supervisor serves it for all.
        "EVENTSTORE_METRICS_PORT": "0",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if metrics_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    return env


def follow_supervisor() -> None:
    """In a worker: be stopped (SIGTERM) when the supervisor dies, even by SIGKILL, rather than
    serve on as an orphan nobody restarts or stops."""
    if sys.platform != "linux":
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() == 1:  # it died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


class Supervisor:
    def __init__(
        self,
        settings: ServerSettings,
        env: Mapping[str, str],
        command: Sequence[str] = WORKER_COMMAND,
        first_backoff_s: float = 0.5,
        kill_after_grace_s: float = KILL_AFTER_GRACE_S,
    ) -> None:
        self._settings = settings
        self._env = env
        self._command = list(command)
        self._first_backoff_s = first_backoff_s
        self._kill_after_grace_s = kill_after_grace_s
        self._workers: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()
        #: why the supervisor stops on its own (a worker's configuration error, or giving up)
        self._failure: int | None = None

    @property
    def pids(self) -> dict[int, int]:
        """The live workers' pids by index."""
        return {index: process.pid for index, process in self._workers.items()}

    def stop(self) -> None:
        self._stopping.set()

    def reload(self) -> None:
        if self._settings.permissions_file is None:
            # Workers install no SIGHUP handler then: it would kill them.
            log.info("SIGHUP ignored: there is no permissions file to reload")
            return
        self.signal_all(signal.SIGHUP)

    def signal_all(self, sig: signal.Signals) -> None:
        for process in self._workers.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(sig)

    async def run(self) -> int:
        """Keep `processes` workers up until stopped; the exit status of the whole server."""
        slots = [
            asyncio.create_task(self._keep(index), name=f"worker-{index}")
            for index in range(self._settings.processes)
        ]
        await self._stopping.wait()
        self.signal_all(signal.SIGTERM)
        _, pending = await asyncio.wait(
            slots, timeout=self._settings.grace_period_s + self._kill_after_grace_s
        )
        if pending:
            log.error("workers did not stop within the grace period; killing them", pids=self.pids)
            self.signal_all(signal.SIGKILL)
        statuses = await asyncio.gather(*slots)
        if self._failure is not None:
            return self._failure
        return 0 if all(status is None or status in STOPPED for status in statuses) else 1

    async def _keep(self, index: int) -> int | None:
        """Run worker `index`, restarting it when it dies, until the supervisor stops. Returns
        the last worker's exit status (None: none was running when the supervisor stopped)."""
        early_deaths = 0
        env = dict(self._env, EVENTSTORE_WORKER=str(index))
        while True:
            started = time.monotonic()
            try:
                process = await asyncio.create_subprocess_exec(*self._command, env=env)
            except OSError as exc:  # out of processes or memory: restarting would not help
                log.error("cannot start a worker; stopping", worker=index, reason=str(exc))
                self._fail(1)
                return None
            self._workers[index] = process
            if self._stopping.is_set():  # asked to stop while this one was being started
                process.send_signal(signal.SIGTERM)
            log.info("worker started", worker=index, pid=process.pid)
            status = await process.wait()
            del self._workers[index]
            self._forget(process.pid)
            if self._stopping.is_set():
                return status
            if status == CONFIG_ERROR:
                log.error("worker refused the configuration; stopping", worker=index)
                self._fail(CONFIG_ERROR)
                return status
            # Exit status 1: its start-up failed (eventstore.server.main), however long it tried.
            early = status == 1 or time.monotonic() - started < STABLE_AFTER_S
            early_deaths = early_deaths + 1 if early else 0
            if early_deaths > MAX_EARLY_DEATHS:
                log.error(
                    "workers keep dying at start; giving up",
                    worker=index,
                    status=status,
                    deaths=early_deaths,
                )
                self._fail(1)
                return status
            delay = restart_delay(early_deaths, self._first_backoff_s)
            log.warning(
                "worker died; restarting it",
                worker=index,
                pid=process.pid,
                status=status,
                restart_in_s=delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                return None

    def _forget(self, pid: int) -> None:
        """A dead worker's live gauges must not count any more (its counters still do)."""
        directory = self._env.get("PROMETHEUS_MULTIPROC_DIR")
        if directory is not None:
            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]

    def _fail(self, status: int) -> None:
        if self._failure is None:
            self._failure = status
        self._stopping.set()


def run(settings: ServerSettings) -> int:
    """Supervise `settings.processes` workers; the server's exit status."""
    with contextlib.ExitStack() as held:
        metrics_dir = None
        try:
            listen, sock = reserve(settings.listen)
            health_listen, health_sock = (
                reserve(settings.health_listen) if settings.health_listen else ("", None)
            )
            http_listen, http_sock = (
                reserve(settings.http_listen) if settings.http_listen else ("", None)
            )
            for reserved in (sock, health_sock, http_sock):
                if reserved is not None:
                    held.enter_context(reserved)
            if settings.metrics_port:
                metrics_dir = tempfile.mkdtemp(prefix="eventstore-metrics-")
                held.callback(shutil.rmtree, metrics_dir, ignore_errors=True)
                registry = prometheus_client.CollectorRegistry()
                multiprocess.MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
                prometheus_client.start_http_server(
                    settings.metrics_port, addr=settings.metrics_host, registry=registry
                )
        except OSError as exc:
            log.error("cannot open the ports", reason=str(exc))
            sys.stderr.write(f"eventstore-server: {exc}\n")
            return 1
        env = worker_env(os.environ, listen, health_listen, metrics_dir, http_listen=http_listen)
        log.info(
            "starting worker processes",
            processes=settings.processes,
            address=listen,
            http=http_listen or None,
        )
        return asyncio.run(_supervise(Supervisor(settings, env)))


async def _supervise(supervisor: Supervisor) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, supervisor.stop)
    # Without a handler SIGHUP would end the supervisor and orphan its workers.
    loop.add_signal_handler(signal.SIGHUP, supervisor.reload)
    status = await supervisor.run()
    log.info("stopped", status=status)
    return status
