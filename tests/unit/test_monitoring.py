"""The alerting rules and the Grafana dashboard (helm/eventstore/monitoring/) use only metrics
and labels the server and the indexer export, and every alert is well formed and tested.

The exported names come from the collectors themselves (every module that imports
prometheus_client is imported and its collectors read), so a renamed metric fails here, not
silently in production as an alert that can never fire. PromQL is read by a small scanner:
enough for the selectors (`name{label op "value"}`) our expressions hold."""

from __future__ import annotations

import ast
import importlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from eventstore.search.documents import Form
from eventstore.v1 import eventstore_pb2

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "helm" / "eventstore" / "monitoring"
RULES = MONITORING / "alerts.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
RULE_TESTS = ROOT / "tests" / "monitoring" / "alerts.test.yaml"

#: Labels Prometheus (or the operator's ServiceMonitor/PodMonitor) attaches to every target.
TARGET_LABELS = frozenset(
    {"namespace", "job", "instance", "pod", "container", "service", "endpoint", "__name__"}
)
#: The sample names prometheus_client writes for each collector type.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
}
#: Label values we can know from the code: matching any other value selects nothing.
KNOWN_VALUES = {
    "method": frozenset(eventstore_pb2.DESCRIPTOR.services_by_name["EventStore"].methods_by_name),
    "code": frozenset(code.name for code in grpc.StatusCode),
    "form": frozenset(form.name.lower() for form in Form),
    "outcome": frozenset({"applied", "failed"}),  # eventstore/policy_file.py
    "attempt": frozenset({"first", "retry"}),  # eventstore/api/servicer.py, SubscribeGroup
}


# --- what the code exports -----------------------------------------------------------------


def metric_modules() -> list[str]:
    """Every module of ours that imports prometheus_client (and so may define collectors)."""
    found = []
    for package in ("eventstore", "indexer", "replayer"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if "v1" in path.relative_to(ROOT).parts:
                continue  # generated protobuf code
            if "prometheus_client" in top_level_imports(path):
                module = path.relative_to(ROOT).with_suffix("").parts
                found.append(".".join(module[:-1] if module[-1] == "__init__" else module))
    return found


def top_level_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def exported_metrics() -> dict[str, frozenset[str]]:
    """Sample name -> its label names, for every collector our modules define."""
    samples: dict[str, frozenset[str]] = {}
    for name in metric_modules():
        for value in vars(importlib.import_module(name)).values():
            if not isinstance(value, MetricWrapperBase):
                continue
            # prometheus_client keeps label names private; describe() gives name and type.
            labels = frozenset(value._labelnames)
            for family in value.describe():
                for suffix in SUFFIXES[family.type]:
                    extra = {"le"} if suffix == "_bucket" else set()
                    samples[family.name + suffix] = labels | extra
    return samples


# --- what the rules and the dashboard use --------------------------------------------------


@dataclass
class Selector:
    metric: str
    matchers: list[tuple[str, str, str]] = field(default_factory=list)  # (label, op, value)


#: PromQL words that are not metric names.
KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2", "start", "end"}
    | {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
    | {"bottomk", "topk", "quantile", "limitk", "limit_ratio"}
)
#: Followed by a list of label names in parentheses.
LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
NUMBER = re.compile(r"[0-9.]+(?:[eE][+-]?[0-9]+)?[a-zA-Z]*")
STRING = re.compile(r"\"(?:\\.|[^\"\\])*\"|'(?:\\.|[^'\\])*'|`[^`]*`")
MATCHER = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*")
GRAFANA_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|\w+)")


def _unquote(literal: str) -> str:
    return literal[1:-1] if literal[0] == "`" else str(ast.literal_eval(literal))


def _matchers(expr: str, start: int) -> tuple[list[tuple[str, str, str]], int]:
    """The matchers of `{...}` at expr[start]; and the index after the closing brace."""
    found: list[tuple[str, str, str]] = []
    i = start + 1
    while True:
        while i < len(expr) and expr[i] in " \t\n,":
            i += 1
        if i >= len(expr):
            raise ValueError(f"unclosed matchers at {expr[start : start + 60]!r}")
        if expr[i] == "}":
            return found, i + 1
        matcher = MATCHER.match(expr, i)
        string = STRING.match(expr, matcher.end()) if matcher else None
        if matcher is None or string is None:
            raise ValueError(f"cannot read the matchers at {expr[start : start + 60]!r}")
        found.append((matcher[1], matcher[2], _unquote(string[0])))
        i = string.end()


def selectors(expr: str) -> Iterator[Selector]:
    """The series selectors of a PromQL expression."""
    i = 0
    while i < len(expr):
        char = expr[i]
        if char.isspace():
            i += 1
        elif char == "#":  # a comment, to the end of the line
            end = expr.find("\n", i)
            i = len(expr) if end < 0 else end
        elif (string := STRING.match(expr, i)) is not None:
            i = string.end()
        elif char == "[":
            i = expr.index("]", i) + 1  # a range or subquery: durations, Grafana variables
        elif char == "$":
            variable = GRAFANA_VARIABLE.match(expr, i)
            i = variable.end() if variable else i + 1
        elif char == "{":  # a selector by matchers only
            only, i = _matchers(expr, i)
            names = [value for label, op, value in only if label == "__name__" and op == "="]
            yield Selector(names[0] if names else "", only)
        elif char.isdigit() or (char == "." and expr[i + 1 : i + 2].isdigit()):
            number = NUMBER.match(expr, i)
            assert number is not None
            i = number.end()
        elif (ident := IDENT.match(expr, i)) is not None:
            word = ident[0]
            i = ident.end()
            rest = expr[i:].lstrip()
            if word.lower() in LABEL_LISTS and rest.startswith("("):
                i = expr.index(")", i) + 1
            elif word.lower() in KEYWORDS | LABEL_LISTS or rest.startswith("("):
                continue  # an operator, an aggregation or a function
            else:
                selector = Selector(word)
                if rest.startswith("{"):
                    selector.matchers, i = _matchers(expr, expr.index("{", i))
                yield selector
        else:
            i += 1


def problems(expr: str, exported: dict[str, frozenset[str]]) -> list[str]:
    """What in `expr` does not exist in the code's metrics (empty: all of it does)."""
    found = []
    seen = list(selectors(expr))
    if not seen:
        found.append(f"no metric in {expr!r}")
    for selector in seen:
        if selector.metric not in exported:
            found.append(f"{selector.metric!r} is not exported")
            continue
        for label, op, value in selector.matchers:
            if label not in exported[selector.metric] | TARGET_LABELS:
                found.append(f"{selector.metric} has no label {label!r}")
            elif label in KNOWN_VALUES and op in ("=", "=~") and not GRAFANA_VARIABLE.search(value):
                # Only plain alternations (a|b|c) are checked; anything fancier passes.
                for alternative in value.split("|") if op == "=~" else [value]:
                    if IDENT.fullmatch(alternative) and alternative not in KNOWN_VALUES[label]:
                        found.append(f"{selector.metric}{{{label}}} is never {alternative!r}")
    return found


def rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop()
        panels += panel.get("panels", [])
        for target in panel.get("targets", []):
            queries.append((f"panel {panel['title']!r}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            # label_values(selector, label): the selector is PromQL, the label one of its own.
            values = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
            assert values is not None, query
            queries.append((f"variable {variable['name']!r}", values[1]))
    return queries


@pytest.fixture(scope="module")
def exported() -> dict[str, frozenset[str]]:
    return exported_metrics()


# --- the checks ----------------------------------------------------------------------------


def test_the_code_exports_the_metrics_we_expect(exported: dict[str, frozenset[str]]) -> None:
    # The scan found the server's and the indexer's collectors, with the right suffixes.
    assert {"eventstore.metrics", "indexer.main", "indexer.bulk"} <= set(metric_modules())
    assert exported["eventstore_rpc_requests_total"] == {"method", "code"}
    assert exported["eventstore_rpc_latency_seconds_bucket"] == {"method", "le"}
    assert exported["eventstore_unpublished_aggregates"] == frozenset()
    assert exported["eventstore_indexer_lag"] == {"topic", "partition"}
    assert "eventstore_indexer_dead_letters_total" in exported
    assert "eventstore_rpc_requests" not in exported, "a counter's samples end in _total"


@pytest.mark.parametrize("rule", rules(), ids=lambda rule: rule["alert"])
def test_alert_uses_only_exported_metrics(
    rule: dict[str, Any], exported: dict[str, frozenset[str]]
) -> None:
    assert problems(rule["expr"], exported) == []


@pytest.mark.parametrize(
    ("where", "query"), dashboard_queries(), ids=[where for where, _ in dashboard_queries()]
)
def test_dashboard_uses_only_exported_metrics(
    where: str, query: str, exported: dict[str, frozenset[str]]
) -> None:
    assert problems(query, exported) == [], where


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("rate(eventstore_rpc_request_total[5m])", "'eventstore_rpc_request_total' is not"),
        ("eventstore_rpc_requests", "'eventstore_rpc_requests' is not exported"),
        ("sum by (le) (eventstore_indexer_lags)", "'eventstore_indexer_lags' is not"),
        ('eventstore_indexer_lag{partiton="1"}', "has no label 'partiton'"),
        ('eventstore_rpc_requests_total{method=~"Append|Apend"}', "never 'Apend'"),
        ('eventstore_rpc_requests_total{code="RESOURCE_EXHAUSTION"}', "never 'RESOURCE_EX"),
        ('{__name__="eventstore_subscriptions"}', "'eventstore_subscriptions' is not"),
        ("sum(rate(x[5m]))", "'x' is not exported"),
    ],
)
def test_a_misspelled_metric_or_label_is_caught(
    expr: str, problem: str, exported: dict[str, frozenset[str]]
) -> None:
    found = problems(expr, exported)
    assert any(problem in p for p in found), found


def test_the_scanner_reads_our_kind_of_promql() -> None:
    expr = """
      histogram_quantile(0.99, sum by (namespace, le) (rate(a_bucket{method="Append"}[5m])))
        > 0.2 unless on (job) b offset 5m  # a comment: not_a_metric
      / ignoring (code) group_left (method)
        sum without (pod) (c{x=~"1|2", y!="}"}[$__rate_interval]))
    """
    assert [(s.metric, s.matchers) for s in selectors(expr)] == [
        ("a_bucket", [("method", "=", "Append")]),
        ("b", []),
        ("c", [("x", "=~", "1|2"), ("y", "!=", "}")]),
    ]


@pytest.mark.parametrize("rule", rules(), ids=lambda rule: rule["alert"])
def test_alert_is_well_formed(rule: dict[str, Any]) -> None:
    assert rule["alert"].startswith("Eventstore")
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    assert re.fullmatch(r"\d+[smh]", rule["for"]), "a `for`: one bad scrape must not page"
    assert {"summary", "description", "runbook"} <= rule["annotations"].keys()
    assert "Alerting and dashboards" in rule["annotations"]["runbook"], "points to the README"


def namespace_of(series: str) -> str:
    found = re.search(r'namespace="([^"]+)"', series)
    assert found is not None, f"every test series has a namespace: {series}"
    return found[1]


def test_every_alert_has_a_firing_and_a_silent_promtool_case() -> None:
    """promtool compares the whole set of an alert's instances at each eval_time: a case whose
    input series hold a namespace that no expected alert names shows the alert silent there."""
    alerts = {rule["alert"] for rule in rules()}
    assert len(alerts) == len(rules()), "alert names are unique"
    fires: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        namespaces = {namespace_of(series["series"]) for series in case["input_series"]}
        for check in case.get("alert_rule_test", []):
            expected = check.get("exp_alerts") or []
            if expected:
                fires.add(check["alertname"])
            if namespaces - {alert["exp_labels"]["namespace"] for alert in expected}:
                silent.add(check["alertname"])
    assert alerts <= fires, f"never shown firing: {alerts - fires}"
    assert alerts <= silent, f"never shown staying silent: {alerts - silent}"
    assert fires | silent <= alerts, (
        f"tests of alerts that do not exist: {(fires | silent) - alerts}"
    )


def test_readme_explains_every_alert() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("### Alerting and dashboards")
    section = readme[start : readme.index("\n## ", start)]
    missing = [rule["alert"] for rule in rules() if f"`{rule['alert']}`" not in section]
    assert missing == []
