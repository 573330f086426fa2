"""The Go and TypeScript clients (clients/): their example programs, built from the generated
code, run against a real server; what they append is then read back from Python.

Each program appends to a fresh aggregate (no_stream), reads it back, appends at a stale version
and decodes the conflict's details (WrongExpectedVersion in the google.rpc.Status trailer), and
subscribes until caught up; it exits non-zero on any mismatch. EVENTSTORE_GO_EXAMPLE (the
binary) and EVENTSTORE_TS_EXAMPLE (the compiled example.js) name them: `make test` builds both
(`make clients`) and passes them. CI must run them, so there they fail when missing."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from eventstore.client import EventStoreClient
from eventstore.server import RunningServer
from tests.integration.principals import KEYS, Connect

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Example:
    language: str
    variable: str
    #: the aggregate type the program appends when not told one
    default_type: str

    def command(self) -> list[str]:
        path = os.environ.get(self.variable)
        if not path:
            if os.environ.get("CI"):
                pytest.fail(f"{self.variable} is not set: CI runs `make test`, which sets it")
            pytest.skip(f"{self.variable} is not set")  # allowed-skip: run outside make
        assert Path(path).is_file(), f"no {self.language} example at {path} (make clients)"
        return ["node", path] if path.endswith(".js") else [path]


EXAMPLES = [
    Example("go", "EVENTSTORE_GO_EXAMPLE", "GoExample"),
    Example("typescript", "EVENTSTORE_TS_EXAMPLE", "TsExample"),
]


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


async def run(command: list[str], *args: str) -> Run:
    # A subprocess of the event loop: the server under test runs on this same loop.
    process = await asyncio.create_subprocess_exec(
        *command,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


async def assert_appended(
    client: EventStoreClient, aggregate_id: str, aggregate_type: str, language: str
) -> None:
    """The program's two events, and nothing of its refused stale append."""
    events = [event async for event in client.read(aggregate_id)]
    assert [(e.version, e.event_type, e.aggregate_type) for e in events] == [
        (1, "ItemAdded", aggregate_type),
        (2, "ItemAdded", aggregate_type),
    ]
    assert [json.loads(e.data) for e in events] == [
        {"item": "apple", "quantity": 1},
        {"item": "pear", "quantity": 2},
    ]
    assert all(e.metadata["client"] == language for e in events)
    assert all(e.content_type == "application/json" for e in events)


@pytest.fixture(params=EXAMPLES, ids=lambda e: e.language)
def example(request: pytest.FixtureRequest) -> Example:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def command(example: Example) -> list[str]:
    return example.command()


# `command` comes first: a missing program fails or skips before a server starts.
async def test_the_example_runs_against_a_real_server(
    command: list[str], example: Example, server: RunningServer, client: EventStoreClient
) -> None:
    address = f"127.0.0.1:{server.port}"
    aggregate_id = f"{example.language}-{uuid.uuid4()}"

    result = await run(command, "--aggregate", aggregate_id, address)

    assert result.returncode == 0, result.stderr
    assert f"to {aggregate_id}" in result.stdout
    assert "stale append refused (WRONG_EXPECTED_VERSION, actual version 2)" in result.stdout
    assert "caught up after 2 events" in result.stdout
    await assert_appended(client, aggregate_id, example.default_type, example.language)

    # The program notices when the server does not answer as it expects: the aggregate now has
    # events, so its no_stream append is refused.
    again = await run(command, "--aggregate", aggregate_id, address)
    assert again.returncode == 1
    assert "append" in again.stderr
    # grpc-go spells the code FailedPrecondition, grpc-js FAILED_PRECONDITION.
    assert "failedprecondition" in again.stderr.lower().replace("_", "")


async def test_the_example_sends_its_api_key(
    command: list[str], example: Example, secure_server: RunningServer, connect: Connect
) -> None:
    address = f"127.0.0.1:{secure_server.port}"
    aggregate_id = f"{example.language}-{uuid.uuid4()}"

    anonymous = await run(
        command, "--aggregate", aggregate_id, "--aggregate-type", "Order", address
    )
    assert anonymous.returncode == 1
    assert "unauthenticated" in anonymous.stderr.lower()

    # `orders` may append, read and subscribe to Order.
    result = await run(
        command,
        "--api-key",
        KEYS["orders"],
        "--aggregate",
        aggregate_id,
        "--aggregate-type",
        "Order",
        address,
    )
    assert result.returncode == 0, result.stderr
    await assert_appended(connect(KEYS["auditor"]), aggregate_id, "Order", example.language)
