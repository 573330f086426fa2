"""The servers' jars and the OpenSearch distribution, resolved from Maven Central into the cache.

A `.complete` marker is written last, so an interrupted download is redone, never half-used.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

from devstack.errors import DownloadFailed
from devstack.locations import cache_dir

log = logging.getLogger(__name__)

MAVEN_DIR = Path(__file__).resolve().parent / "maven"


def maven(args: Sequence[str]) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise DownloadFailed("Maven ('mvn') is required to fetch the servers from Maven Central")
    cmd = [mvn, "-q", "-B", f"-Dmaven.repo.local={cache_dir() / 'm2'}", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DownloadFailed(
            f"maven failed: {' '.join(cmd)}\n{result.stdout[-4000:]}{result.stderr[-4000:]}"
        )


def resolve_classpath(name: str, version: str) -> Path:
    """The runtime jars of `name` at `version`, resolved once into the cache."""
    target = cache_dir() / "jars" / f"{name}-{version}"
    marker = target / ".complete"
    if marker.exists():
        return target
    log.info("downloading %s %s and its dependencies from Maven Central ...", name, version)
    started = time.monotonic()
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    maven(
        [
            "dependency:copy-dependencies",
            "-f",
            str(MAVEN_DIR / f"{name}.pom.xml"),
            f"-Dserver.version={version}",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={partial}",
        ]
    )
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    marker.touch()
    log.info("  %s: %.0f MB in %.1f s", name, dir_size_mb(target), time.monotonic() - started)
    return target


def resolve_opensearch_distribution(version: str) -> Path:
    target = cache_dir() / "dist" / f"opensearch-{version}"
    marker = target / ".complete"
    if marker.exists():
        return target
    log.info("downloading the OpenSearch %s distribution from Maven Central ...", version)
    started = time.monotonic()
    zips = cache_dir() / "dist" / "zips"
    maven(
        [
            "dependency:copy",
            f"-Dartifact=org.opensearch.distribution.integ-test-zip:opensearch:{version}:zip",
            f"-DoutputDirectory={zips}",
        ]
    )
    archive = zips / f"opensearch-{version}.zip"
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(partial)
    # The archive holds one top-level folder; zipfile drops the executable bits.
    (inner,) = list(partial.iterdir())
    for script in (inner / "bin").iterdir():
        script.chmod(0o755)
    shutil.rmtree(target, ignore_errors=True)
    inner.rename(target)
    shutil.rmtree(partial, ignore_errors=True)
    marker.touch()
    size_mb = archive.stat().st_size / 1e6
    log.info("  opensearch: %.0f MB in %.1f s", size_mb, time.monotonic() - started)
    return target


def dir_size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
