"""The local-stack tool's bookkeeping: it only ever claims processes it started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devstack import stack


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
