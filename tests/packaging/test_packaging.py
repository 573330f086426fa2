"""The distribution installs from constraints.txt the way the Dockerfile's build stage does
(`pip install -c constraints.txt .`, not editable) and ships every entry point and module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_install_has_every_command(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run(
        [*pip, "-c", str(ROOT / "constraints.txt"), str(ROOT)],
        check=True,
        timeout=600,
        capture_output=True,
    )
    python = str(venv / "bin" / "python")
    imports = subprocess.run(
        [
            python,
            "-c",
            "import eventstore.server, eventstore.migrate, indexer.main, replayer.main, "
            "replayer.examples.users, eventstore.v1.eventstore_pb2_grpc, eventstore.access_cli;"
            # What EVENTSTORE_TRACING=otlp loads (only then: eventstore.tracing.configure).
            "import opentelemetry.sdk.trace, "
            "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,  # not the repository: only what was installed may be imported
    )
    assert imports.returncode == 0, imports.stderr
    for command in (
        "eventstore-server",
        "eventstore-indexer",
        "eventstore-migrate",
        "eventstore-replay",
        "eventstore-access",
    ):
        assert (venv / "bin" / command).is_file(), command
    help_text = subprocess.run(
        [str(venv / "bin" / "eventstore-replay"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert help_text.returncode == 0
    assert "republish" in help_text.stdout
