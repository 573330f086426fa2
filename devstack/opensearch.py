"""OpenSearch: one node on 127.0.0.1:9200 (HTTP, no security plugin), run from its distribution."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from devstack.downloads import resolve_opensearch_distribution
from devstack.service import Service

VERSION = "2.19.6"


def prepare(home: Path, java: Path) -> list[str]:
    dist = resolve_opensearch_distribution(VERSION)
    for sub in ("data", "logs", "tmp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    conf = home / "config"
    if not conf.exists():
        shutil.copytree(dist / "config", conf)
    return [
        str(dist / "bin" / "opensearch"),
        "-Ediscovery.type=single-node",
        "-Enetwork.host=127.0.0.1",
        "-Ehttp.port=9200",
        "-Etransport.port=9300",
        f"-Epath.data={home / 'data'}",
        f"-Epath.logs={home / 'logs'}",
        "-Ecluster.routing.allocation.disk.threshold_enabled=false",
        "-Ecluster.name=eventstore-dev",
    ]


def environment(home: Path, java: Path) -> dict[str, str]:
    java_opts = "-Xms512m -Xmx512m"
    if os.geteuid() == 0:
        # OpenSearch refuses to start as root, and CI machines run everything as root. Its
        # root check is made through JNA and is skipped (with a warning) when JNA's native
        # library cannot load, so we stop JNA from unpacking it. This only loses mlockall and
        # the seccomp filter, which a loopback development node does not enforce anyway.
        java_opts += " -Djna.nounpack=true -Djna.nosys=true"
    return {
        "OPENSEARCH_JAVA_HOME": str(java),
        "JAVA_HOME": str(java),
        "OPENSEARCH_PATH_CONF": str(home / "config"),
        "OPENSEARCH_TMPDIR": str(home / "tmp"),
        "OPENSEARCH_JAVA_OPTS": java_opts,
    }


def answers(url: str) -> bool:
    health = url.rstrip("/") + "/_cluster/health?wait_for_status=yellow&timeout=2s"
    try:
        with urllib.request.urlopen(health, timeout=5) as response:  # noqa: S310 - http(s) only
            status = json.load(response).get("status")
            return status in ("yellow", "green")
    except (OSError, urllib.error.URLError, ValueError):
        return False


SERVICE = Service(
    "opensearch",
    "EVENTSTORE_OPENSEARCH_URL",
    "http://127.0.0.1:9200",
    (9200, 9300),
    answers,
    prepare,
    environment,
)
