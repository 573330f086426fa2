"""The proto governance `make proto-check` runs does its job: the API passes `buf lint`, and
`buf breaking` against the released snapshot (protos/released) refuses a change that breaks
existing clients while letting an additive one through. Each check runs on a copy of the
repository's buf.yaml and protos/, so what is tested is the real configuration.

Needs the buf binary: EVENTSTORE_BUF names it (`make test` passes it, `make proto-check` builds
it); without it these tests are skipped."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
API = Path("protos") / "eventstore" / "v1" / "eventstore.proto"
RELEASED = Path("protos") / "released"


@pytest.fixture(scope="module")
def buf() -> str:
    path = os.environ.get("EVENTSTORE_BUF")
    if not path:
        if os.environ.get("CI"):
            pytest.fail("EVENTSTORE_BUF is not set: CI runs `make test`, which sets it")
        # `make test-unit` promises no network, and building buf needs the Go module proxy.
        pytest.skip("EVENTSTORE_BUF is not set")  # allowed-skip: make test-unit, no network
    assert Path(path).is_file(), f"no buf at {path}: `make proto-check` builds it"
    return path


def run(buf: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [buf, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def breaking(
    buf: str, tmp_path: Path, edit: Callable[[str], str]
) -> subprocess.CompletedProcess[str]:
    """`buf breaking` as `make proto-check` runs it, on a copy whose API went through `edit`."""
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    proto = tmp_path / API
    before = proto.read_text()
    after = edit(before)
    assert after != before, "the edit did not apply: has the proto changed around it?"
    proto.write_text(after)
    return run(buf, tmp_path, "breaking", "--against", str(RELEASED))


def test_the_api_passes_lint(buf: str) -> None:
    result = run(buf, ROOT, "lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_api_is_compatible_with_the_release(buf: str) -> None:
    result = run(buf, ROOT, "breaking", "--against", str(RELEASED))
    assert result.returncode == 0, result.stdout + result.stderr


EVENTS = "repeated EventData events = 4;"

ADDITIONS: dict[str, Callable[[str], str]] = {
    "optional-field": lambda text: text.replace(
        EVENTS, EVENTS + "\n  optional string note = 1000;"
    ),
    "rpc": lambda text: (
        text.replace(
            "service EventStore {",
            "service EventStore {\n  rpc Ping(PingRequest) returns (PingResponse);",
        )
        + "\nmessage PingRequest {}\n\nmessage PingResponse {}\n"
    ),
}


def test_a_renumbered_field_breaks(buf: str, tmp_path: Path) -> None:
    result = breaking(buf, tmp_path, lambda text: text.replace(EVENTS, EVENTS[:-2] + "14;"))
    assert result.returncode != 0, result.stdout + result.stderr
    assert any(
        '"AppendRequest"' in line and '"4"' in line and '"events"' in line
        for line in result.stdout.splitlines()
    ), result.stdout


def test_a_renamed_field_breaks(buf: str, tmp_path: Path) -> None:
    """The same number under another name reads the same bytes, but generated code and JSON
    break: the reason the check is FILE, not WIRE."""
    result = breaking(
        buf, tmp_path, lambda text: text.replace(EVENTS, EVENTS.replace("events", "items"))
    )
    assert result.returncode != 0, result.stdout + result.stderr
    assert any(
        '"AppendRequest"' in line and '"items"' in line for line in result.stdout.splitlines()
    ), result.stdout


@pytest.mark.parametrize("addition", ADDITIONS.values(), ids=ADDITIONS.keys())
def test_an_addition_passes(buf: str, tmp_path: Path, addition: Callable[[str], str]) -> None:
    result = breaking(buf, tmp_path, addition)
    assert result.returncode == 0, result.stdout + result.stderr
