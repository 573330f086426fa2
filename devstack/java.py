"""Finding a JDK the three servers accept."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from devstack.errors import JavaNotFound


def java_major(java: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=30, check=False
        ).stderr
    except OSError:
        return None
    for token in out.split():
        token = token.strip('"')
        if (token[:1].isdigit() and "." in token) or token.isdigit():
            head = token.split(".")[0]
            if head.isdigit():
                major = int(head)
                return 8 if major == 1 else major
    return None


def java_home() -> Path:
    """A JDK 17 (17 to 21 work too): Cassandra 5.0 and OpenSearch 2.x refuse newer ones."""
    candidates: list[Path] = []
    for var in ("EVENTSTORE_JAVA_HOME", "JAVA_HOME"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]))
    candidates += sorted(Path("/usr/lib/jvm").glob("java-17-openjdk*"))
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path).resolve().parent.parent)
    for home in candidates:
        major = java_major(home / "bin" / "java")
        if major is not None and 17 <= major <= 21:
            return home
    raise JavaNotFound(
        "no JDK 17 found: install OpenJDK 17 or point EVENTSTORE_JAVA_HOME at one "
        "(Cassandra 5.0 and OpenSearch 2.19 do not run on JDK 22+)"
    )
