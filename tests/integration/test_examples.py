"""Every documented example runs: the README's Python programs and the client module's
docstring example, each as its own process against a real server (and indexer)."""

from __future__ import annotations

import ast
import asyncio
import os
import re
import sys
import textwrap
from pathlib import Path

import pytest

import eventstore.client
from eventstore.config import KafkaSettings, OpenSearchSettings
from eventstore.server import RunningServer
from tests.integration.test_indexer import IndexerProcess
from tests.support import read_topic

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: Where the examples say the server is: replaced by the test server's address.
DOCUMENTED_ADDRESS = "127.0.0.1:50051"


def readme_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", (ROOT / "README.md").read_text(), re.M | re.S)


def readme_examples() -> list[str]:
    """The whole programs (they run `asyncio.run(...)`); the other blocks are fragments."""
    return [block for block in readme_blocks() if "asyncio.run(" in block]


def docstring_example(doc: str) -> str:
    """The indented block after the docstring's `::` line."""
    lines = doc.split("::\n", 1)[1].splitlines()
    block = []
    for line in lines:
        if line and not line.startswith(" "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block)).strip() + "\n"


async def run_example(code: str, server: RunningServer, directory: Path) -> str:
    assert DOCUMENTED_ADDRESS in code
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code.replace(DOCUMENTED_ADDRESS, f"127.0.0.1:{server.port}"),
        cwd=directory,
        # This checkout's eventstore, whichever one the environment has installed.
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, f"{code}\n--- stderr:\n{err.decode()}"
    return out.decode()


def test_every_python_block_of_the_readme_is_found() -> None:
    assert len(readme_examples()) == 4
    fragments = [block for block in readme_blocks() if "asyncio.run(" not in block]
    assert len(fragments) == 2
    for fragment in fragments:  # a client's calls, inside an async function: at least valid
        compile(fragment, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


async def test_the_readme_examples_run(
    server: RunningServer,
    kafka_settings: KafkaSettings,
    opensearch_settings: OpenSearchSettings,
    tmp_path: Path,
) -> None:
    indexer = IndexerProcess(kafka_settings, opensearch_settings, tmp_path / "indexer.log")
    await indexer.start()
    try:
        appending, subscribing, grouping, querying = readme_examples()

        out = await run_example(appending, server, tmp_path)
        assert out.splitlines() == [
            "1 2",
            "stream is at 2",
            "1 UserCreated {'userId': 1, 'name': 'Alice'}",
            "2 UserNameUpdated {'userId': 1, 'name': 'Alicia'}",
        ]

        # Type subscriptions catch up from Kafka: let the two events get there first.
        records = await asyncio.to_thread(
            read_topic, kafka_settings.bootstrap, kafka_settings.topic("User"), 2
        )
        assert len(records) == 2
        out = await run_example(subscribing, server, tmp_path)
        assert out.splitlines() == [
            "user-1 1 UserCreated",
            "user-1 2 UserNameUpdated",
            "history delivered; live from here",
        ]
        assert (tmp_path / "users.checkpoint").read_text()
        resumed = await run_example(subscribing, server, tmp_path)
        assert resumed.splitlines() == ["history delivered; live from here"]

        out = await run_example(grouping, server, tmp_path)
        assert out.splitlines() == ["read model <- user-1 1 UserCreated"]

        out = await run_example(querying, server, tmp_path)
        found = [line.split()[1:] for line in out.splitlines() if "not indexed yet" not in line]
        assert found == [["user-1", "UserCreated"], ["user-3", "UserCreated"]]
    finally:
        await indexer.kill()


async def test_the_client_docstring_example_runs(server: RunningServer, tmp_path: Path) -> None:
    assert eventstore.client.__doc__ is not None
    out = await run_example(docstring_example(eventstore.client.__doc__), server, tmp_path)
    assert out.splitlines() == ["1", "1 OrderPlaced {'total': 3}"]
