"""The figures of one workload, the ratios #15 asks for, and the terminal table (pure code)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

#: Column order of the CPU figures; "client" is this process (the adapter loop, or the gRPC
#: clients driving the server).
PROCESSES = ("server", "cassandra", "kafka", "opensearch", "indexer", "client")


def latency_ms(samples: Sequence[float]) -> dict[str, float] | None:
    """p50, p99 and max in milliseconds of latencies in seconds (None: no sample).

    Percentiles interpolate between the closest ranks (`statistics.quantiles`, inclusive)."""
    if not samples:
        return None
    ordered = sorted(samples)
    if len(ordered) == 1:
        p50 = p99 = ordered[0]
    else:
        q = statistics.quantiles(ordered, n=100, method="inclusive")
        p50, p99 = q[49], q[98]
    return {"p50": p50 * 1000, "p99": p99 * 1000, "max": ordered[-1] * 1000}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


@dataclass
class Lag:
    """Downstream of one workload: what was committed but not there yet when its load ended,
    and how long after that end it held everything (None: not known, not within the wait)."""

    behind_at_end: int | None
    caught_up_s: float | None


@dataclass
class Result:
    path: str  # "adapter" (storage adapter loop, no gRPC), "floor" (null gRPC server), "server"
    phase: str  # "fixed", "sustain" (the 10k events/s search) or "ceiling"
    clients: int
    batch: int  # events per append
    expected: str  # "exact" or "any"
    seconds: float
    appends: int
    errors: int
    latency_ms: dict[str, float] | None
    cpu_ms_per_append: dict[str, float | None]
    publication: Lag | None = None
    indexing: Lag | None = None
    ratios: dict[str, float | None] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.clients}x{self.batch}" + (" any" if self.expected == "any" else "")

    @property
    def appends_per_s(self) -> float:
        return self.appends / self.seconds

    @property
    def events_per_s(self) -> float:
        return self.appends * self.batch / self.seconds

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "phase": self.phase,
            "clients": self.clients,
            "batch": self.batch,
            "expected": self.expected,
            "seconds": round(self.seconds, 3),
            "appends": self.appends,
            "events": self.appends * self.batch,
            "errors": self.errors,
            "appends_per_s": round(self.appends_per_s, 1),
            "events_per_s": round(self.events_per_s, 1),
            "latency_ms": self.latency_ms,
            "cpu_ms_per_append": self.cpu_ms_per_append,
            "publication": asdict(self.publication) if self.publication else None,
            "indexing": asdict(self.indexing) if self.indexing else None,
            "ratios": self.ratios,
        }


def compare(server: Result, adapter: Result) -> dict[str, float | None]:
    """#15's ratios for a server workload against the adapter loop at the same clients and batch
    size: appends/s, and the server's CPU per append over the adapter loop's own (and, beside
    them, Cassandra's CPU per append through the server over Cassandra's for the loop)."""
    return {
        "appends_per_s": ratio(server.appends_per_s, adapter.appends_per_s),
        "server_cpu": ratio(
            server.cpu_ms_per_append.get("server"), adapter.cpu_ms_per_append.get("client")
        ),
        "cassandra_cpu": ratio(
            server.cpu_ms_per_append.get("cassandra"), adapter.cpu_ms_per_append.get("cassandra")
        ),
    }


def add_ratios(results: Sequence[Result]) -> None:
    """Set the ratios of every server result that has an adapter result at its clients and
    batch size (the latest such one)."""
    adapters = {(r.clients, r.batch): r for r in results if r.path == "adapter"}
    for result in results:
        adapter = adapters.get((result.clients, result.batch))
        if adapter is None:
            continue
        if result.path == "server":
            result.ratios = compare(result, adapter)
        elif result.path == "floor":
            result.ratios = floor_ratios(result, adapter)


def floor_ratios(floor: Result, adapter: Result) -> dict[str, float | None]:
    """The null server's figures against the adapter loop: appends/s, and (gRPC's CPU per call +
    the loop's CPU per append) over the loop's, the least `server_cpu` can be in one process."""
    grpc_ms, loop_ms = (
        floor.cpu_ms_per_append.get("server"),
        adapter.cpu_ms_per_append.get("client"),
    )
    return {
        "appends_per_s": ratio(floor.appends_per_s, adapter.appends_per_s),
        "server_cpu": ratio(grpc_ms, loop_ms),
        "floor_cpu": None if grpc_ms is None else ratio(grpc_ms + (loop_ms or 0.0), loop_ms),
    }


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _lag(lag: Lag | None) -> str:
    if lag is None:
        return "-"
    behind = "?" if lag.behind_at_end is None else str(lag.behind_at_end)
    return f"{behind}/{'>wait' if lag.caught_up_s is None else f'{lag.caught_up_s:.1f}s'}"


def table(results: Sequence[Result]) -> str:
    """One line per workload. CPU in ms per append; r.apd/s, r.CPU: the ratios to the adapter loop
    (appends/s, server CPU over the loop's CPU); lags: behind at the end / caught up after."""
    header = (
        f"{'path':<8}{'phase':<9}{'load':>10}{'appends/s':>10}{'events/s':>10}{'err':>5}"
        f"{'p50':>8}{'p99':>8}{'max':>8}  "
        + "".join(f"{p[:6]:>7}" for p in PROCESSES)
        + f"{'r.apd/s':>8}{'r.CPU':>8}  {'publication':>14}{'indexing':>14}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        lat = r.latency_ms or {}
        lines.append(
            f"{r.path:<8}{r.phase:<9}{r.label:>10}{r.appends_per_s:>10.0f}{r.events_per_s:>10.0f}"
            f"{r.errors:>5}{_num(lat.get('p50'), 1):>8}{_num(lat.get('p99'), 1):>8}"
            f"{_num(lat.get('max'), 1):>8}  "
            + "".join(f"{_num(r.cpu_ms_per_append.get(p)):>7}" for p in PROCESSES)
            + f"{_num(r.ratios.get('appends_per_s')):>8}{_num(r.ratios.get('server_cpu')):>8}"
            f"  {_lag(r.publication):>14}{_lag(r.indexing):>14}"
        )
    return "\n".join(lines)
