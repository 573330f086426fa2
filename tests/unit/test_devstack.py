"""The local-stack tool's bookkeeping: it only ever claims processes it started."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from devstack import __main__ as cli
from devstack import cassandra, cluster, kafka, processes, run, stack, templates
from devstack.errors import ServiceFailed, UnknownService
from devstack.tls import Pki


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> stack.Service:
    monkeypatch.setenv("EVENTSTORE_STACK_DIR", str(tmp_path))
    svc = stack.by_name(["kafka"])[0]
    svc.home.mkdir(parents=True)
    return svc


def test_dead_pid_file_is_cleaned_up(service: stack.Service) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    service.pid_file.write_text(str(child.pid))
    assert service.running_pid() is None
    assert not service.pid_file.exists()


def test_live_process_that_is_not_ours_is_not_claimed(service: stack.Service) -> None:
    service.pid_file.write_text(str(os.getpid()))  # alive, but not started by the tool
    assert service.running_pid() is None
    assert not service.pid_file.exists()


def test_our_live_process_is_recognised(service: stack.Service) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", str(service.home)]
    )
    try:
        service.pid_file.write_text(str(child.pid))
        assert service.running_pid() == child.pid
    finally:
        child.kill()
        child.wait()


def test_endpoint_variables_mean_external_services(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTSTORE_KAFKA_BOOTSTRAP", "kafka.internal:9092")
    kafka = stack.by_name(["kafka"])[0]
    assert kafka.external == "kafka.internal:9092"
    assert stack.endpoints()["EVENTSTORE_KAFKA_BOOTSTRAP"] == "kafka.internal:9092"


@pytest.fixture
def only_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., stack.Service]:
    """Makes `stack` know one made-up service, with its state under tmp_path."""
    monkeypatch.setenv("EVENTSTORE_STACK_DIR", str(tmp_path))
    monkeypatch.setattr(stack, "java_home", lambda: tmp_path / "no-jdk-needed")

    def install(
        command: list[str], answers: bool = False, env_var: str = "DEVSTACK_TEST_ENDPOINT"
    ) -> stack.Service:
        fake = stack.Service(
            "fake",
            env_var,
            "127.0.0.1:1",
            (),
            lambda _endpoint: answers,
            lambda home, _java: [*command, str(home)],
            system_log="fake.log",
        )
        monkeypatch.setattr(stack, "SERVICES", [fake])
        return fake

    return install


def test_a_service_that_exits_during_start_up_raises_with_its_log(
    only_service: Callable[..., stack.Service],
) -> None:
    fake = only_service(["/bin/sh", "-c", "echo boom-on-stdout; exit 3", "sh"])
    (fake.home / "logs").mkdir(parents=True)
    (fake.home / "logs" / "fake.log").write_text("boom-in-system-log\n")
    with pytest.raises(ServiceFailed) as failed:
        stack.up()
    message = str(failed.value)
    assert "fake: the process exited during start-up" in message
    assert "boom-on-stdout" in message
    assert "boom-in-system-log" in message


def test_unknown_service_names_raise_and_only_main_exits(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(UnknownService, match="'nosuch'"):
        stack.by_name(["kafka", "nosuch"])
    assert cli.main(["status", "nosuch"]) == 1
    assert "unknown service(s) ['nosuch']" in capsys.readouterr().err
    assert cli.main(["restart"]) == 2


def test_status_exits_zero_only_when_every_service_answers(
    only_service: Callable[..., stack.Service],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DEVSTACK_TEST_ENDPOINT", "elsewhere:1")
    only_service([], answers=True)
    assert cli.main(["status"]) == 0
    assert capsys.readouterr().out.split() == [
        *("fake", "up", "elsewhere:1", "external", "(DEVSTACK_TEST_ENDPOINT)")
    ]
    only_service([], answers=False)
    assert cli.main(["status"]) == 1


def properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    return {key: value for key, value in pairs}


def listener_names(value: str) -> list[str]:
    return [entry.split("://")[0] for entry in value.split(",")]


def test_kafka_has_a_faulty_listener_advertised_where_a_test_proxy_listens(
    tmp_path: Path,
) -> None:
    props = properties(kafka.server_properties(tmp_path, Pki(tmp_path / "pki")))
    listeners = props["listeners"].split(",")
    advertised = props["advertised.listeners"].split(",")
    assert f"FAULTY://{kafka.FAULTY_LISTEN}" in listeners
    assert f"FAULTY://{kafka.FAULTY_BOOTSTRAP}" in advertised
    assert kafka.FAULTY_LISTEN != kafka.FAULTY_BOOTSTRAP
    # The listeners that were there before are unchanged.
    assert {"PLAINTEXT://127.0.0.1:9092", "CONTROLLER://127.0.0.1:9093"} <= set(listeners)
    assert f"SASL_SSL://{kafka.TLS_BOOTSTRAP}" in listeners
    assert "PLAINTEXT://127.0.0.1:9092" in advertised
    assert f"SASL_SSL://{kafka.TLS_BOOTSTRAP}" in advertised
    assert props["controller.listener.names"] == "CONTROLLER"
    assert "CONTROLLER" not in listener_names(props["advertised.listeners"])
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    protocols = dict(pair.split(":") for pair in props["listener.security.protocol.map"].split(","))
    assert set(protocols) == set(listener_names(props["listeners"]))
    assert protocols["FAULTY"] == "PLAINTEXT"
    assert protocols["SASL_SSL"] == "SASL_SSL"
    assert props["listener.name.sasl_ssl.ssl.keystore.location"] == str(
        tmp_path / "pki" / "server.p12"
    )
    assert props["log.dirs"] == str(tmp_path / "data")
    # `up` refuses to start over a stranger on the new port too.
    assert int(kafka.FAULTY_LISTEN.rpartition(":")[2]) in kafka.SERVICE.ports


def test_every_template_is_filled() -> None:
    home, tls = Path("/state/x"), Pki(Path("/state/pki"))
    rendered = [
        kafka.server_properties(home, tls),
        templates.render("kafka-log4j.properties", home=home),
        templates.render("cassandra-logback.xml", home=home),
        cassandra.cassandra_yaml(home, tls, cassandra.SINGLE),
        cluster.broker_properties(home, 0),
    ]
    assert len(rendered) == len(list(templates.TEMPLATES_DIR.iterdir()))
    for text in rendered:
        assert "$" not in text
        assert "/state/x/" in text


def test_up_leaves_an_external_service_alone(
    only_service: Callable[..., stack.Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEVSTACK_TEST_ENDPOINT", "elsewhere:1")
    fake = only_service(["/bin/sh", "-c", "exit 3", "sh"], answers=True)
    stack.up()
    assert not fake.pid_file.exists()
    assert not fake.log_file.exists()


def test_make_run_serves_with_one_process_per_core_unless_told_otherwise() -> None:
    assert run.environment({})["EVENTSTORE_PROCESSES"] == str(os.cpu_count() or 1)
    assert run.environment({"EVENTSTORE_PROCESSES": "1"})["EVENTSTORE_PROCESSES"] == "1"


def test_make_run_serves_the_rest_face_unless_turned_off() -> None:
    assert run.environment({})["EVENTSTORE_HTTP_LISTEN"] == "127.0.0.1:8080"
    assert run.environment({"EVENTSTORE_HTTP_LISTEN": ""})["EVENTSTORE_HTTP_LISTEN"] == ""


def test_cluster_nodes_get_one_balanced_token_and_their_own_address() -> None:
    tokens = cluster.balanced_tokens(3)
    assert tokens[0] == -(2**63)
    assert all(b - a == 2**64 // 3 for a, b in itertools.pairwise(tokens))
    assert tokens[-1] < 2**63
    home, tls = Path("/state/x"), Pki(Path("/state/pki"))
    yaml_text = cassandra.cassandra_yaml(home, tls, cassandra.SINGLE)
    assert "initial_token" not in yaml_text  # a node made before this cannot change its token
    assert "listen_address: 127.0.0.1" in yaml_text
    for node, address in zip(cluster.CASSANDRA_NODES, cluster.ADDRESSES, strict=True):
        assert node.host == address
        assert node.endpoint == f"{address}:9042"
        assert not node.external  # the cluster's nodes are always ours to start and kill
    broker = cluster.broker_properties(home, 1)
    assert "node.id=2" in broker
    assert "listeners=PLAINTEXT://127.0.0.3:9092,CONTROLLER://127.0.0.3:9093" in broker
    assert "min.insync.replicas=2" in broker


def test_the_cluster_group_names_its_six_nodes() -> None:
    names = [s.name for s in stack.by_name(["cluster"])]
    assert names == [f"cluster-cassandra-{n}" for n in (1, 2, 3)] + [
        f"cluster-kafka-{n}" for n in (1, 2, 3)
    ]
    assert [s.name for s in stack.by_name([])] == ["cassandra", "kafka", "opensearch"]
    found = stack.endpoints(cluster=True)
    assert found["EVENTSTORE_CASSANDRA_HOSTS"] == cluster.CASSANDRA_HOSTS
    assert found["EVENTSTORE_KAFKA_BOOTSTRAP"].count(",") == 2


def test_down_signals_every_process_before_waiting_for_any(tmp_path: Path) -> None:
    """The first process ends on SIGTERM only once the second has had its SIGTERM too, as
    the last broker of a KRaft quorum needs the others: one at a time, it would be killed."""
    loop = "while :; do sleep 0.1; done"
    second = subprocess.Popen(
        ["/bin/sh", "-c", f"trap 'touch {tmp_path}/second; exit 0' TERM; {loop}"]
    )
    first = subprocess.Popen(
        [
            "/bin/sh",
            "-c",
            f"trap 'while [ ! -f {tmp_path}/second ]; do sleep 0.1; done; exit 0' TERM; {loop}",
        ]
    )
    try:
        time.sleep(0.3)  # both shells have set their traps
        assert processes.terminate_all([first.pid, second.pid], grace_s=20) == set()
        assert first.wait(5) == 0
        assert second.wait(5) == 0
    finally:
        for child in (first, second):
            child.kill()
            child.wait()
