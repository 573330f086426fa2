"""The Helm chart renders with default and production-like values, every object validates
against the Kubernetes schemas (the Prometheus operator's objects against its CRDs), and a
wrong-typed value is refused by values.schema.json.
Transport security and authentication: the server gets its certificates and permissions file
from mounted Secrets, probes use the plaintext health port, and combinations the server would
refuse at start are refused at render time.
Monitoring: the PrometheusRule and the dashboard ConfigMap carry monitoring/alerts.yaml and
monitoring/grafana-dashboard.json unchanged, and the monitors select the pods they scrape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema  # kubernetes-validate's own validator (untyped: see mypy overrides)
import pytest
import yaml

from eventstore.config import TracingSettings, load

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "eventstore"
KUBERNETES = "1.30.0"
#: Custom resources: Kubernetes' schemas do not know them; their CRDs say what they hold.
CRD_KINDS = frozenset({"ServiceMonitor", "PodMonitor", "PrometheusRule"})
MONITORING = (
    "metrics.serviceMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "metrics.grafanaDashboard.enabled=true",
)


@pytest.fixture(scope="module")
def helm() -> str:
    path = os.environ.get("EVENTSTORE_HELM") or str(
        Path(os.environ.get("EVENTSTORE_CACHE_DIR", Path.home() / ".cache" / "eventstore"))
        / "bin"
        / "helm-v3.22.0"
    )
    assert Path(path).is_file(), f"no helm at {path}: run `make chart-check` (it builds helm)"
    return path


def strict(schema: Any) -> Any:
    """A CRD's openAPIV3Schema that refuses unknown fields, as `kubernetes_validate --strict`
    does for built-in kinds (the API server would silently prune them)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    return schema


@pytest.fixture(scope="module")
def crd_schemas() -> dict[tuple[str, str], Any]:
    """(apiVersion, kind) -> strict schema, from the Prometheus operator's CRDs (pinned; fetched
    once from the Go module proxy by `make chart-check`)."""
    directory = Path(
        os.environ.get("EVENTSTORE_CRDS")
        or Path(os.environ.get("EVENTSTORE_CACHE_DIR", Path.home() / ".cache" / "eventstore"))
        / "crds"
        / "prometheus-operator-v0.85.0"
    )
    assert directory.is_dir(), f"no CRDs in {directory}: run `make chart-check` (it fetches them)"
    schemas = {}
    for path in sorted(directory.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            schemas[key] = strict(version["schema"]["openAPIV3Schema"])
    assert {kind for _, kind in schemas} == CRD_KINDS
    return schemas


def crd_errors(schemas: dict[tuple[str, str], Any], obj: Any) -> list[str]:
    schema = schemas[(obj["apiVersion"], obj["kind"])]
    return [
        f"{obj['kind']}/{obj['metadata']['name']} at /{'/'.join(map(str, e.absolute_path))}: "
        f"{e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(obj)
    ]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def template(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run(helm, "template", "t", str(CHART), "--kube-version", KUBERNETES, *args)


def render(helm: str, *values: str) -> str:
    extra = [arg for v in values for arg in ("-f", str(ROOT / "helm" / v))]
    result = template(helm, *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout


def objects(manifest: str) -> dict[tuple[str, str], Any]:
    """Every rendered object by (kind, name)."""
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(manifest) if d}


def server_pod(helm: str, *sets: str) -> Any:
    """The server Deployment's pod spec, rendered with default values and `--set` each of sets."""
    result = template(helm, *[arg for s in sets for arg in ("--set", s)])
    assert result.returncode == 0, result.stderr
    return objects(result.stdout)[("Deployment", "t-eventstore-server")]["spec"]["template"]["spec"]


def env_of(container: Any) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container["env"]}


def secret_behind(pod: Any, path: str) -> tuple[str, Any]:
    """The Secret whose mounted volume holds the file `path`, and that volume's mount."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = [
        m
        for m in pod["containers"][0]["volumeMounts"]
        if PurePosixPath(path).parent == PurePosixPath(m["mountPath"])
    ]
    assert len(mounts) == 1, f"{path}: not in exactly one mounted directory: {mounts}"
    volume = volumes[mounts[0]["name"]]
    assert "secret" in volume, volume
    return volume["secret"]["secretName"], mounts[0]


@pytest.mark.parametrize("values", [(), ("values-production.yaml",)], ids=["default", "production"])
def test_lint_render_and_validate(
    helm: str, crd_schemas: dict[tuple[str, str], Any], values: tuple[str, ...], tmp_path: Path
) -> None:
    extra = [arg for v in values for arg in ("-f", str(ROOT / "helm" / v))]
    lint = run(helm, "lint", str(CHART), *extra)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(render(helm, *values))
    docs = [doc for doc in yaml.safe_load_all(manifest.read_text()) if doc]
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "Job"} <= kinds
    if values:  # the production shape turns monitoring on
        assert kinds >= CRD_KINDS
    assert [
        e for doc in docs if doc["kind"] in CRD_KINDS for e in crd_errors(crd_schemas, doc)
    ] == []
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
    # The Prometheus operator's kinds have no built-in schema: checked against the CRDs above.
    assert all(any(f"kind {kind}" in line for kind in CRD_KINDS) for line in unchecked), unchecked


def test_production_values_shape(helm: str) -> None:
    docs = [d for d in yaml.safe_load_all(render(helm, "values-production.yaml")) if d]
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    server = by_kind[("Deployment", "t-eventstore-server")]["spec"]["template"]["spec"]
    container = server["containers"][0]
    assert container["readinessProbe"]["grpc"]["port"] == 8081  # plaintext health port
    assert server["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["EVENTSTORE_CASSANDRA_PASSWORD_FILE"].startswith("/var/run/secrets/eventstore/")
    assert "EVENTSTORE_CASSANDRA_PASSWORD" not in env, "secrets only as mounted files"
    assert {"EVENTSTORE_TLS_CERT_FILE", "EVENTSTORE_TLS_CLIENT_CA_FILE"} <= env.keys(), "mTLS"
    assert env["EVENTSTORE_PERMISSIONS_FILE"]
    assert "EVENTSTORE_AUTH_DISABLED" not in env
    assert ("HorizontalPodAutoscaler", "t-eventstore-server") in by_kind
    assert env["EVENTSTORE_PROCESSES"] == "2"
    assert container["resources"]["requests"]["cpu"] == "2", "a core per server process"
    job = by_kind[("Job", "t-eventstore-migrate")]
    assert "pre-install" in job["metadata"]["annotations"]["helm.sh/hook"]
    config = by_kind[("ConfigMap", "t-eventstore")]["data"]
    # Three copies of every record, two of which must hold it before it counts as published.
    assert config["EVENTSTORE_KAFKA_REPLICATION_FACTOR"] == "3"
    assert config["EVENTSTORE_KAFKA_MIN_INSYNC_REPLICAS"] == "2"


@pytest.mark.parametrize(
    "override",
    [
        "server.replicas=two",
        "server.processes=0",
        "server.processes=two",
        "cassandra.serialConsistency=SOMETIMES",
        "kafka.partitions=0",
        "kafka.minInsyncReplicas=-1",
        "server.healthPort=0",
        "server.tls.enabled=yes",
        "server.tls.secretName=Not_A_Name",
        "auth.enabled=maybe",
        "auth.reloadSeconds=0",
        "auth.apiKey=secret",
        "metrics.prometheusRule.enabled=yes",
        "metrics.prometheusRule.labels.release=not a label value",
        "metrics.prometheusRule.rules=none",
        "metrics.grafanaDashboard.labels.grafana_dashboard=1",
        "tracing.sampler=sometimes",
        "tracing.endpoint=otel-collector:4318",
        "tracing.enabled=on",
    ],
)
def test_bad_values_are_rejected_at_install(helm: str, override: str) -> None:
    result = run(helm, "template", "t", str(CHART), "--kube-version", KUBERNETES, "--set", override)
    assert result.returncode != 0
    assert (
        "values don't meet the specifications of the schema" in result.stderr
        or "at '/" in result.stderr
    )


def test_tls_and_permissions_come_from_mounted_secrets(helm: str) -> None:
    pod = server_pod(
        helm,
        "server.tls.enabled=true",
        "server.tls.secretName=es-server-tls",
        "server.tls.clientCASecretName=es-client-ca",
        "auth.permissionsSecretName=es-permissions",
        "auth.reloadSeconds=2",
        "server.healthPort=8181",
    )
    container = pod["containers"][0]
    env = env_of(container)
    files = {
        "EVENTSTORE_TLS_CERT_FILE": ("es-server-tls", "tls.crt"),
        "EVENTSTORE_TLS_KEY_FILE": ("es-server-tls", "tls.key"),
        "EVENTSTORE_TLS_CLIENT_CA_FILE": ("es-client-ca", "ca.crt"),
        "EVENTSTORE_PERMISSIONS_FILE": ("es-permissions", "permissions.yaml"),
    }
    for variable, (secret, key) in files.items():
        path = env[variable]
        assert path is not None, variable
        assert PurePosixPath(path).name == key, (variable, path)
        assert secret_behind(pod, path)[0] == secret, variable
    assert env["EVENTSTORE_PERMISSIONS_RELOAD_S"] == "2"
    assert "EVENTSTORE_AUTH_DISABLED" not in env
    # A subPath mount never sees Secret updates: the keys could not rotate without a restart.
    permissions = env["EVENTSTORE_PERMISSIONS_FILE"]
    assert permissions is not None
    assert "subPath" not in secret_behind(pod, permissions)[1]
    assert not any("subPath" in m for m in container["volumeMounts"] if m["name"] != "tmp")
    # The kubelet's gRPC probes speak no TLS: all of them use the plaintext health port.
    listen = env["EVENTSTORE_HEALTH_LISTEN"]
    assert listen is not None
    health_port = int(listen.rpartition(":")[2])
    assert health_port == 8181
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == health_port, probe
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["health"] == health_port
    assert ports["grpc"] != health_port


def test_health_port_is_not_in_the_service(helm: str) -> None:
    service = objects(render(helm))[("Service", "t-eventstore")]
    assert {p["name"] for p in service["spec"]["ports"]} == {"grpc", "metrics", "http"}


def service_ports(helm: str, *sets: str) -> dict[str, Any]:
    result = template(helm, *[arg for s in sets for arg in ("--set", s)])
    assert result.returncode == 0, result.stderr
    service = objects(result.stdout)[("Service", "t-eventstore")]
    return {p["name"]: p for p in service["spec"]["ports"]}


def test_the_rest_face_is_served_and_in_the_service(helm: str) -> None:
    container = server_pod(helm, "server.http.port=8090")["containers"][0]
    assert env_of(container)["EVENTSTORE_HTTP_LISTEN"] == "0.0.0.0:8090"
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["http"] == 8090
    http = service_ports(helm, "server.http.port=8090")["http"]
    assert (http["port"], http["targetPort"], http["appProtocol"]) == (8090, "http", "http")
    tls = ("server.tls.enabled=true", "server.tls.secretName=es-tls")
    assert service_ports(helm, *tls)["http"]["appProtocol"] == "https"


def test_the_rest_face_can_be_turned_off(helm: str) -> None:
    container = server_pod(helm, "server.http.enabled=false")["containers"][0]
    assert "EVENTSTORE_HTTP_LISTEN" not in env_of(container)
    assert "http" not in {p["name"] for p in container["ports"]}
    assert "http" not in service_ports(helm, "server.http.enabled=false")


def test_default_values_authenticate_and_serve_health_in_plaintext(helm: str) -> None:
    pod = server_pod(helm)
    env = env_of(pod["containers"][0])
    permissions = env["EVENTSTORE_PERMISSIONS_FILE"]
    assert permissions is not None
    assert secret_behind(pod, permissions)[0] == "eventstore-permissions"
    assert "EVENTSTORE_AUTH_DISABLED" not in env
    assert not any(name.startswith("EVENTSTORE_TLS_") for name in env)
    assert env["EVENTSTORE_HEALTH_LISTEN"] == "0.0.0.0:8081"


def test_auth_enabled_without_permissions_secret_is_refused(helm: str) -> None:
    result = template(helm, "--set", "auth.enabled=true", "--set", "auth.permissionsSecretName=")
    assert result.returncode != 0
    assert "auth.permissionsSecretName" in result.stderr


def test_auth_disabled_says_so_and_mounts_no_permissions(helm: str) -> None:
    pod = server_pod(helm, "auth.enabled=false")
    env = env_of(pod["containers"][0])
    assert env["EVENTSTORE_AUTH_DISABLED"] == "true"
    assert "EVENTSTORE_PERMISSIONS_FILE" not in env
    assert "EVENTSTORE_PERMISSIONS_RELOAD_S" not in env
    assert not any(
        v.get("secret", {}).get("secretName") == "eventstore-permissions" for v in pod["volumes"]
    )
    assert "permissions" not in {m["name"] for m in pod["containers"][0]["volumeMounts"]}


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["server.tls.clientCASecretName=es-client-ca"], "server.tls.clientCASecretName"),
        (
            ["server.tls.enabled=false", "server.tls.clientCASecretName=es-client-ca"],
            "server.tls.enabled",
        ),
        (["server.tls.enabled=true"], "server.tls.secretName"),
        (["server.healthPort=50051"], "server.healthPort"),
        (["server.http.port=50051"], "server.http.port"),
        (["server.http.port=8081"], "server.http.port"),
    ],
    ids=[
        "client-ca-without-tls",
        "client-ca-with-tls-off",
        "tls-without-secret",
        "port-clash",
        "http-port-clash",
        "http-health-clash",
    ],
)
def test_inconsistent_security_values_are_refused(helm: str, sets: list[str], message: str) -> None:
    result = template(helm, *[arg for s in sets for arg in ("--set", s)])
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(("sets", "expected"), [((), "1"), (("server.processes=4",), "4")])
def test_server_processes_reach_the_server(helm: str, sets: tuple[str, ...], expected: str) -> None:
    env = env_of(server_pod(helm, *sets)["containers"][0])
    assert env["EVENTSTORE_PROCESSES"] == expected


def test_monitoring_objects_are_off_by_default(helm: str) -> None:
    rendered = objects(render(helm))
    assert not [key for key in rendered if key[0] in CRD_KINDS]
    assert ("ConfigMap", "t-eventstore-dashboard") not in rendered


def test_prometheus_rule_carries_the_rule_file(helm: str) -> None:
    result = template(
        helm,
        *[
            a
            for s in (*MONITORING, "metrics.prometheusRule.labels.release=kps")
            for a in ("--set", s)
        ],
    )
    assert result.returncode == 0, result.stderr
    rule = objects(result.stdout)[("PrometheusRule", "t-eventstore")]
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert rule["metadata"]["labels"]["app.kubernetes.io/instance"] == "t"
    # The one source, unchanged (Prometheus templates in annotations included).
    source = yaml.safe_load((CHART / "monitoring" / "alerts.yaml").read_text())
    assert rule["spec"] == source
    assert "{{ $labels.job }}" in rule["spec"]["groups"][0]["rules"][0]["annotations"]["summary"]


def test_dashboard_configmap_carries_the_dashboard(helm: str) -> None:
    result = template(
        helm,
        *[a for s in MONITORING for a in ("--set", s)],
        "--set",
        "metrics.grafanaDashboard.annotations.grafana_folder=Eventstore",
    )
    assert result.returncode == 0, result.stderr
    config = objects(result.stdout)[("ConfigMap", "t-eventstore-dashboard")]
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"  # the sidecar's default
    assert config["metadata"]["annotations"] == {"grafana_folder": "Eventstore"}
    source = json.loads((CHART / "monitoring" / "grafana-dashboard.json").read_text())
    assert json.loads(config["data"]["eventstore.json"]) == source


def test_monitors_select_the_pods_and_ports_that_serve_metrics(helm: str) -> None:
    result = template(helm, *[a for s in MONITORING for a in ("--set", s)])
    assert result.returncode == 0, result.stderr
    rendered = objects(result.stdout)

    def pod_of(name: str) -> Any:
        return rendered[("Deployment", name)]["spec"]["template"]

    def port_names(pod: Any) -> set[str]:
        return {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}

    # The indexer has no Service: a PodMonitor scrapes its pods (and only them).
    monitor = rendered[("PodMonitor", "t-eventstore-indexer")]["spec"]
    wanted = monitor["selector"]["matchLabels"]
    indexer, server = pod_of("t-eventstore-indexer"), pod_of("t-eventstore-server")
    assert wanted.items() <= indexer["metadata"]["labels"].items()
    assert not wanted.items() <= server["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["podMetricsEndpoints"]} <= port_names(indexer)
    # The server's ServiceMonitor: its Service, on the Service's metrics port.
    service = rendered[("Service", "t-eventstore")]
    service_monitor = rendered[("ServiceMonitor", "t-eventstore")]["spec"]
    assert (
        service_monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert {e["port"] for e in service_monitor["endpoints"]} <= {
        p["name"] for p in service["spec"]["ports"]
    }


def test_crd_validation_refuses_what_the_operator_would_not_take(
    crd_schemas: dict[tuple[str, str], Any],
) -> None:
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "r"},
        "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "1", "for": "5m"}]}]},
    }
    assert crd_errors(crd_schemas, rule) == []
    misspelled = json.loads(json.dumps(rule))
    misspelled["spec"]["groups"][0]["rules"][0]["fore"] = "5m"  # an unknown field
    assert any("'fore'" in e for e in crd_errors(crd_schemas, misspelled))
    bad_duration = json.loads(json.dumps(rule))
    bad_duration["spec"]["groups"][0]["rules"][0]["for"] = "5 minutes"
    assert any("/spec/groups/0/rules/0/for" in e for e in crd_errors(crd_schemas, bad_duration))


def test_the_master_key_comes_from_mounted_secrets(helm: str) -> None:
    assert "EVENTSTORE_MASTER_KEY_FILE" not in env_of(server_pod(helm)["containers"][0])
    pod = server_pod(
        helm,
        "personalData.masterKeySecret.name=es-master-key",
        "personalData.previousMasterKeySecret.name=es-old-master-key",
        "personalData.previousMasterKeySecret.key=old.key",
        "personalData.keyCacheSeconds=5",
    )
    env = env_of(pod["containers"][0])
    files = {
        "EVENTSTORE_MASTER_KEY_FILE": ("es-master-key", "master.key"),
        "EVENTSTORE_PREVIOUS_MASTER_KEY_FILE": ("es-old-master-key", "old.key"),
    }
    for variable, (secret, key) in files.items():
        path = env[variable]
        assert path is not None, variable
        assert PurePosixPath(path).name == key, (variable, path)
        assert secret_behind(pod, path)[0] == secret, variable
    assert env["EVENTSTORE_SUBJECT_KEY_CACHE_S"] == "5"


def test_tracing_is_off_by_default_and_on_passes_the_collector_to_both_processes(
    helm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ("ConfigMap", "t-eventstore")
    off = objects(render(helm))[config]["data"]
    assert not [name for name in off if "TRACING" in name or name.startswith("OTEL_")]
    result = template(
        helm,
        *("--set", "tracing.enabled=true"),
        *("--set", "tracing.endpoint=http://collector.observability:4318"),
        *("--set", "tracing.sampler=parentbased_traceidratio"),
        *("--set", "tracing.samplerArg=0.25"),
        *("--set", "tracing.resourceAttributes=deployment.environment.name=prod"),
    )
    assert result.returncode == 0, result.stderr
    rendered = objects(result.stdout)
    data = rendered[config]["data"]
    assert data["EVENTSTORE_TRACING"] == "otlp"
    assert data["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector.observability:4318"
    assert data["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert data["OTEL_TRACES_SAMPLER_ARG"] == "0.25"
    assert data["OTEL_RESOURCE_ATTRIBUTES"] == (
        "deployment.environment.name=prod,k8s.namespace.name=default"
    )
    # The server and the indexer read it (the service name is each process's own).
    for deployment in ("t-eventstore-server", "t-eventstore-indexer"):
        container = rendered[("Deployment", deployment)]["spec"]["template"]["spec"]["containers"]
        sources = [
            s["configMapRef"]["name"] for s in container[0]["envFrom"] if "configMapRef" in s
        ]
        assert sources == ["t-eventstore"], deployment
    assert "OTEL_SERVICE_NAME" not in data
    # What the processes make of it: valid settings, tracing on.
    for name, value in data.items():
        monkeypatch.setenv(name, str(value))
    assert load(TracingSettings).enabled
