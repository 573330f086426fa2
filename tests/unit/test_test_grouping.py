"""`make test` runs the suite with `--dist loadgroup`: tests marked with one `xdist_group` must
run on one worker (the Kafka fault proxies' fixed port, the cluster's nodes). pytest 9.2.0 with
pytest-xdist 3.8 silently ignores the marks (xdist renames `item._nodeid`; that pytest's
`nodeid` no longer reads it), and nothing else would notice: this runs a toy suite the same way.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TOY = """
import os
import pytest

@pytest.mark.xdist_group("together")
@pytest.mark.parametrize("i", range(6))
def test_grouped(i):
    with open(os.path.join(os.path.dirname(__file__), f"worker-{i}"), "w") as out:
        out.write(os.environ["PYTEST_XDIST_WORKER"])
"""


def test_marked_tests_run_on_one_worker(tmp_path: Path) -> None:
    (tmp_path / "test_toy.py").write_text(TOY)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-n",
            "3",
            "--dist",
            "loadgroup",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            str(tmp_path / "test_toy.py"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    workers = {(tmp_path / f"worker-{i}").read_text() for i in range(6)}
    assert len(workers) == 1, f"one group ran on {sorted(workers)}"
