"""The Helm chart renders with default and production-like values, every object validates
against the Kubernetes schemas, and a wrong-typed value is refused by values.schema.json."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "eventstore"
KUBERNETES = "1.30.0"


@pytest.fixture(scope="module")
def helm() -> str:
    path = os.environ.get("EVENTSTORE_HELM") or str(
        Path(os.environ.get("EVENTSTORE_CACHE_DIR", Path.home() / ".cache" / "eventstore"))
        / "bin"
        / "helm-v3.22.0"
    )
    assert Path(path).is_file(), f"no helm at {path}: run `make chart-check` (it builds helm)"
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def render(helm: str, *values: str) -> str:
    extra = [arg for v in values for arg in ("-f", str(ROOT / "helm" / v))]
    result = run(helm, "template", "t", str(CHART), "--kube-version", KUBERNETES, *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("values", [(), ("values-production.yaml",)], ids=["default", "production"])
def test_lint_render_and_validate(helm: str, values: tuple[str, ...], tmp_path: Path) -> None:
    extra = [arg for v in values for arg in ("-f", str(ROOT / "helm" / v))]
    lint = run(helm, "lint", str(CHART), *extra)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(render(helm, *values))
    kinds = {doc["kind"] for doc in yaml.safe_load_all(manifest.read_text()) if doc}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "Job"} <= kinds
    validate = run(
        sys.executable,
        "-m",
        "kubernetes_validate",
        "--strict",
        "-k",
        KUBERNETES,
        str(manifest),
    )
    output = validate.stdout + validate.stderr
    assert validate.returncode == 0, output
    unchecked = [line for line in output.splitlines() if line.startswith("WARN")]
    # The ServiceMonitor is a CRD (Prometheus operator): no built-in schema to check it with.
    assert all("kind ServiceMonitor" in line for line in unchecked), unchecked


def test_production_values_shape(helm: str) -> None:
    docs = [d for d in yaml.safe_load_all(render(helm, "values-production.yaml")) if d]
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    server = by_kind[("Deployment", "t-eventstore-server")]["spec"]["template"]["spec"]
    container = server["containers"][0]
    assert container["readinessProbe"]["grpc"]["port"] == 50051
    assert server["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["EVENTSTORE_CASSANDRA_PASSWORD_FILE"].startswith("/var/run/secrets/eventstore/")
    assert "EVENTSTORE_CASSANDRA_PASSWORD" not in env, "secrets only as mounted files"
    assert ("HorizontalPodAutoscaler", "t-eventstore-server") in by_kind
    job = by_kind[("Job", "t-eventstore-migrate")]
    assert "pre-install" in job["metadata"]["annotations"]["helm.sh/hook"]


@pytest.mark.parametrize(
    "override",
    ["server.replicas=two", "cassandra.serialConsistency=SOMETIMES", "kafka.partitions=0"],
)
def test_bad_values_are_rejected_at_install(helm: str, override: str) -> None:
    result = run(helm, "template", "t", str(CHART), "--kube-version", KUBERNETES, "--set", override)
    assert result.returncode != 0
    assert (
        "values don't meet the specifications of the schema" in result.stderr
        or "at '/" in result.stderr
    )
