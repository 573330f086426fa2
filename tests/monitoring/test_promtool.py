"""The alerting rules pass `promtool check rules` and their unit tests (alerts.test.yaml:
series in, alerts out, with cases where each alert must stay silent), and the dashboard's
queries are PromQL Prometheus parses. promtool is built once, pinned, by
`make monitoring-check` (EVENTSTORE_PROMTOOL names it)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "helm" / "eventstore" / "monitoring" / "alerts.yaml"
RULE_TESTS = Path(__file__).with_name("alerts.test.yaml")
DASHBOARD = ROOT / "helm" / "eventstore" / "monitoring" / "grafana-dashboard.json"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = os.environ.get("EVENTSTORE_PROMTOOL") or str(
        Path(os.environ.get("EVENTSTORE_CACHE_DIR", Path.home() / ".cache" / "eventstore"))
        / "bin"
        / "promtool-v0.316.0"
    )
    assert Path(path).is_file(), (
        f"no promtool at {path}: run `make monitoring-check` (it builds it)"
    )
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)


def test_rules_are_valid(promtool: str) -> None:
    result = run(promtool, "check", "rules", "--lint=all", "--lint-fatal", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_fire_and_stay_silent_as_tested(promtool: str) -> None:
    result = run(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_wrong_expectation_fails(promtool: str, tmp_path: Path) -> None:
    # The unit tests can fail: an alert expected where none fires is reported.
    wrong = tmp_path / "wrong.test.yaml"
    wrong.write_text(
        f"rule_files: [{RULES}]\n"
        "tests:\n"
        "  - interval: 1m\n"
        "    input_series: []\n"
        "    alert_rule_test:\n"
        "      - eval_time: 5m\n"
        "        alertname: EventstoreIndexerDeadLetters\n"
        "        exp_alerts: [{exp_labels: {severity: warning}}]\n"
    )
    result = run(promtool, "test", "rules", str(wrong))
    assert result.returncode != 0
    assert "EventstoreIndexerDeadLetters" in result.stdout + result.stderr


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    # Each panel query as a recording rule, Grafana's variables replaced by plain values.
    panels: list[Any] = list(json.loads(DASHBOARD.read_text())["panels"])
    exprs = []
    while panels:
        panel = panels.pop()
        panels += panel.get("panels", [])
        exprs += [target["expr"] for target in panel.get("targets", [])]
    assert exprs
    plain = [re.sub(r"\$\w+", "x", expr.replace("$__rate_interval", "5m")) for expr in exprs]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(plain)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
