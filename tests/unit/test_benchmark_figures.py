"""The pure parts of benchmarks.append: percentiles, ratios, /proc parsing, the SVG plot."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from benchmarks import plot
from benchmarks.downstream import Names
from benchmarks.figures import Result, add_ratios, latency_ms, ratio
from benchmarks.support import (
    TICKS_PER_S,
    Watched,
    cpu_ms_per_append,
    cpu_snapshot,
    process_table,
    read_stat,
    with_descendants,
)
from eventstore.config import ServerSettings
from indexer.config import IndexerSettings

SVG = "{http://www.w3.org/2000/svg}"


def result(path: str, clients: int, batch: int, **kwargs: object) -> Result:
    fields: dict[str, object] = {
        "phase": "fixed",
        "expected": "exact",
        "seconds": 10.0,
        "appends": 1000,
        "errors": 0,
        "latency_ms": {"p50": 10.0, "p99": 40.0, "max": 80.0},
        "cpu_ms_per_append": {},
        **kwargs,
    }
    return Result(path=path, clients=clients, batch=batch, **fields)  # type: ignore[arg-type]


def test_percentiles_interpolate_between_ranks_in_milliseconds() -> None:
    # 1..100 ms in any order: inclusive quantiles put p50 at 50.5 and p99 at 99.01.
    samples = [i / 1000 for i in range(100, 0, -1)]
    figures = latency_ms(samples)
    assert figures == pytest.approx({"p50": 50.5, "p99": 99.01, "max": 100.0})


def test_percentiles_of_one_sample_and_of_none() -> None:
    assert latency_ms([0.002]) == pytest.approx({"p50": 2.0, "p99": 2.0, "max": 2.0})
    assert latency_ms([]) is None


def test_ratios_against_the_adapter_loop_at_the_same_clients_and_batch() -> None:
    adapter_1 = result("adapter", 16, 1, appends=20_000, cpu_ms_per_append={"client": 0.25})
    adapter_10 = result("adapter", 16, 10, appends=5_000, cpu_ms_per_append={"client": 0.5})
    server = result(
        "server", 16, 1, appends=5_000, cpu_ms_per_append={"server": 1.0, "cassandra": 2.0}
    )
    unmatched = result("server", 64, 2)
    add_ratios([adapter_1, adapter_10, server, unmatched])
    assert server.ratios["appends_per_s"] == pytest.approx(0.25)
    assert server.ratios["server_cpu"] == pytest.approx(4.0)
    assert server.ratios["cassandra_cpu"] is None  # the loop's Cassandra CPU was not measured
    assert unmatched.ratios == {}
    assert adapter_1.ratios == {}
    assert ratio(1.0, 0.0) is None
    assert ratio(None, 2.0) is None


def test_the_grpc_floor_adds_grpc_alone_to_the_adapter_loops_cost() -> None:
    adapter = result("adapter", 16, 1, appends=20_000, cpu_ms_per_append={"client": 0.25})
    floor = result("floor", 16, 1, appends=40_000, cpu_ms_per_append={"server": 0.3})
    add_ratios([adapter, floor])
    assert floor.ratios["appends_per_s"] == pytest.approx(2.0)
    assert floor.ratios["server_cpu"] == pytest.approx(1.2)
    # (0.3 + 0.25) / 0.25: one process cannot get under 2.2x the loop's CPU per append.
    assert floor.ratios["floor_cpu"] == pytest.approx(2.2)


def write_stat(proc: Path, pid: int, ppid: int, utime: int, stime: int, comm: str) -> None:
    # Fields after the command: state ppid pgrp session tty tpgid flags minflt cminflt majflt
    # cmajflt utime stime ... (man 5 proc); the rest are zeros.
    rest = ["S", str(ppid), *["0"] * 9, str(utime), str(stime), *["0"] * 39]
    (proc / str(pid)).mkdir(exist_ok=True)
    (proc / str(pid) / "stat").write_text(f"{pid} ({comm}) {' '.join(rest)}\n")


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    """A fake /proc: a server (100) with two workers (101, 102), one with a child (103); this
    process (200) is the server's parent; an unrelated process (300); non-process entries."""
    write_stat(tmp_path, 200, 1, 50, 50, "python bench")
    write_stat(tmp_path, 100, 200, 100, 100, "python (server)")
    write_stat(tmp_path, 101, 100, 10, 0, "python")
    write_stat(tmp_path, 102, 100, 0, 20, "python")
    write_stat(tmp_path, 103, 101, 5, 5, "sh")
    write_stat(tmp_path, 300, 1, 1000, 1000, "java")
    (tmp_path / "self").mkdir()
    (tmp_path / "400").mkdir()  # a process gone before its stat was read
    (tmp_path / "meminfo").write_text("MemTotal: 1 kB\n")
    return tmp_path


def test_stat_fields_are_counted_after_a_command_holding_parentheses(proc: Path) -> None:
    ppid, cpu = read_stat((proc / "100" / "stat").read_text())
    assert ppid == 200
    assert cpu == pytest.approx(200 / TICKS_PER_S)


def test_descendants_are_found_from_the_ppid_of_every_process(proc: Path) -> None:
    table = process_table(proc)
    assert sorted(table) == [100, 101, 102, 103, 200, 300]
    assert sorted(with_descendants(100, table)) == [100, 101, 102, 103]
    assert with_descendants(300, table) == [300]
    assert with_descendants(999, table) == []


def test_cpu_per_append_sums_a_process_tree(proc: Path) -> None:
    watched = [Watched("server", 100), Watched("client", 200, tree=False)]
    before = cpu_snapshot(watched, proc)
    assert set(before["server"]) == {100, 101, 102, 103}
    assert set(before["client"]) == {200}  # not the server below it
    write_stat(proc, 104, 100, 30, 0, "python")  # a worker started during the load
    write_stat(proc, 100, 200, 150, 150, "python (server)")
    after = cpu_snapshot(watched, proc)
    per_append = cpu_ms_per_append(before, after, appends=10)
    assert per_append["server"] == pytest.approx((100 + 30) / TICKS_PER_S * 1000 / 10)
    assert per_append["client"] == pytest.approx(0.0)
    assert cpu_ms_per_append(before, after, appends=0)["server"] is None


def test_the_plot_is_well_formed_svg_with_a_series_per_path() -> None:
    results = [
        result("server", 64, 10, phase="sustain", appends=1000, latency_ms=None),
        result("adapter", 1, 1, appends=3000),
        result("adapter", 16, 1, appends=12_000),
        result("server", 1, 1, appends=900, latency_ms={"p50": 5.0, "p99": 20.0, "max": 30.0}),
        result("server", 16, 1, appends=2500),
        result("server", 16, 1, expected="any", appends=2000),
    ]
    root = ET.fromstring(plot.svg(plot.panels(results), "a <title> & more"))
    assert root.tag == f"{SVG}svg"
    panels = root.findall(f"{SVG}g[@class='panel']")
    assert [p.get("data-title") for p in panels] == [
        "throughput, events/s",
        "p99 latency, ms",
    ]
    throughput, p99 = panels
    series = {g.get("data-series"): g for g in throughput.findall(f"{SVG}g[@class='series']")}
    assert set(series) == {"adapter loop (no gRPC)", "through the server"}
    values = [
        float(c.get("data-value", "nan")) for c in series["through the server"].iter(f"{SVG}circle")
    ]
    assert values == pytest.approx([90.0, 250.0, 200.0, 1000.0])
    adapter = [
        float(c.get("data-value", "nan"))
        for c in series["adapter loop (no gRPC)"].iter(f"{SVG}circle")
    ]
    assert adapter == pytest.approx([300.0, 1200.0])
    # The sustained workload has no latencies: no p99 point for it.
    server_p99 = next(
        g
        for g in p99.findall(f"{SVG}g[@class='series']")
        if g.get("data-series") == "through the server"
    )
    assert len(server_p99.findall(f"{SVG}circle")) == 3
    # Categories by clients, then batch size, whatever the order of the results.
    labels = [t.text for t in throughput.findall(f"{SVG}text") if t.get("transform")]
    assert labels == ["1x1", "16x1", "16x1 any", "64x10"]


def test_the_server_and_the_indexer_read_the_same_run_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = Names("abc123")
    for variable, value in {**names.env(), "EVENTSTORE_AUTH_DISABLED": "true"}.items():
        monkeypatch.setenv(variable, value)
    server, indexer = ServerSettings(), IndexerSettings()
    assert server.cassandra.keyspace == names.keyspace
    assert server.kafka.topic_prefix == indexer.kafka.topic_prefix == names.topic_prefix
    assert server.opensearch.index_prefix == indexer.opensearch.index_prefix == names.index_prefix
    assert indexer.group_id != IndexerSettings.model_fields["group_id"].default
    # Everything the run creates starts with the index prefix, so that its removal finds it all.
    assert indexer.kafka.dead_letter_topic.startswith(names.index_prefix)
    assert server.kafka.topic("Order").startswith(names.index_prefix)
