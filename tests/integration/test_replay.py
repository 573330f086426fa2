"""Snapshots through the API and the replay CLI, against the real services."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from eventstore.client import (
    Event,
    EventStoreClient,
    InvalidArgumentError,
)
from eventstore.config import KafkaSettings, OpenSearchSettings
from eventstore.server import RunningServer
from replayer import commands
from tests.integration.test_cloudevents import assert_describes_its_value
from tests.integration.test_indexer import IndexerProcess, wait_for_count
from tests.integration.test_indexer_limits import records_in
from tests.support import header_map, read_topic, unique

pytestmark = pytest.mark.integration


async def replay(server: RunningServer, *args: str, within: float = 120) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "replayer.main",
        "--server",
        f"127.0.0.1:{server.port}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), within)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def indexer(
    kafka_settings: KafkaSettings, opensearch_settings: OpenSearchSettings, tmp_path: Path
) -> AsyncIterator[IndexerProcess]:
    proc = IndexerProcess(kafka_settings, opensearch_settings, tmp_path / "indexer.log")
    await proc.start()
    yield proc
    await proc.kill()


async def test_snapshot_api(client: EventStoreClient) -> None:
    aggregate = unique("snap")
    await client.append(aggregate, "T", [Event("E", {"i": i}) for i in range(5)])
    await client.save_snapshot(aggregate, 3, b'{"n": 3}', "json.test")
    with pytest.raises(InvalidArgumentError) as caught:
        await client.save_snapshot(aggregate, 6, b"{}", "json.test")
    assert caught.value.fields == ["version"]
    with pytest.raises(InvalidArgumentError):
        await client.save_snapshot(unique("nobody"), 1, b"{}", "json.test")
    snapshot = await client.get_snapshot(aggregate)
    assert snapshot is not None
    assert (snapshot.version, snapshot.state) == (3, b'{"n": 3}')
    assert await client.get_snapshot(aggregate, max_version=2) is None
    assert len(await client.read_all(aggregate)) == 5, "snapshots never replace events"


async def test_worked_example_user_does_not_exist(
    server: RunningServer, client: EventStoreClient
) -> None:
    aggregate = unique("user")
    await client.append(
        aggregate,
        "User",
        [
            Event("UserCreated", {"userId": 1, "name": "Alice"}),
            Event("UserNameUpdated", {"userId": 1, "name": "Alicia"}),
            Event("UserDeleted", {"userId": 1}),
        ],
        expected=0,
    )
    code, out, err = await replay(
        server, "state", aggregate, "--reducer", "replayer.examples.users:reduce"
    )
    assert code == 0, err
    assert json.loads(out) == "user does not exist"
    code, out, _ = await replay(
        server,
        "state",
        aggregate,
        "--reducer",
        "replayer.examples.users:reduce",
        "--to-version",
        "2",
    )
    assert json.loads(out) == {"userId": 1, "name": "Alicia"}


async def test_snapshot_plus_tail_equals_full_replay(
    server: RunningServer, client: EventStoreClient
) -> None:
    aggregate = unique("counter")
    for batch in range(100):
        await client.append(
            aggregate, "Counter", [Event("Counted", {"n": batch * 100 + i}) for i in range(100)]
        )
    reducer = ["--reducer", "replayer.examples.counter:reduce"]
    started = time.monotonic()
    code, full, err = await replay(server, "state", aggregate, *reducer, "--no-snapshot")
    full_s = time.monotonic() - started
    assert code == 0, err
    code, _, err = await replay(
        server, "state", aggregate, *reducer, "--to-version", "9900", "--save-snapshot"
    )
    assert code == 0, err
    assert "snapshot saved at version 9900" in err
    started = time.monotonic()
    code, from_snapshot, err = await replay(server, "state", aggregate, *reducer)
    tail_s = time.monotonic() - started
    assert code == 0, err
    assert "starting from the snapshot at version 9900" in err
    assert json.loads(from_snapshot) == json.loads(full)
    assert json.loads(full) == {
        "events": 10_000,
        "total": sum(range(10_000)),
        "last_version": 10_000,
    }
    print(f"\nfull replay {full_s:.2f} s, snapshot + 100-event tail {tail_s:.2f} s (CLI wall time)")


async def test_cli_errors_are_one_line(server: RunningServer, client: EventStoreClient) -> None:
    code, _, err = await replay(
        server, "state", unique("nobody"), "--reducer", "replayer.examples.users:reduce"
    )
    assert code == 2
    assert "has no events" in err
    assert "Traceback" not in err
    aggregate = unique("user")
    await client.append(aggregate, "User", [Event("UserNameUpdated", {"name": "x"})])
    code, _, err = await replay(
        server, "state", aggregate, "--reducer", "replayer.examples.users:reduce"
    )
    assert code == 1
    assert "failed on version 1 (UserNameUpdated)" in err
    assert "Traceback" not in err
    code, _, err = await replay(server, "state", aggregate, "--reducer", "no.such.module:reduce")
    assert code == 2
    assert "cannot import reducer module 'no.such.module'" in err
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "replayer.main",
        "--server",
        "127.0.0.1:1",
        "state",
        "x",
        "--reducer",
        "replayer.examples.users:reduce",
        stderr=asyncio.subprocess.PIPE,
    )
    _, raw = await process.communicate()
    assert process.returncode == 3
    assert "cannot reach the event store at 127.0.0.1:1" in raw.decode()
    assert "Traceback" not in raw.decode()


async def test_export_returns_what_the_query_returns(
    server: RunningServer,
    client: EventStoreClient,
    indexer: IndexerProcess,
    opensearch_settings: OpenSearchSettings,
    tmp_path: Path,
) -> None:
    start = datetime.now(UTC) - timedelta(seconds=1)
    for i in range(40):
        await client.append(
            f"exp-{i % 5}", "Order", [Event("Placed" if i % 3 else "Shipped", {"i": i})]
        )
    end = datetime.now(UTC) + timedelta(seconds=1)
    await wait_for_count(opensearch_settings, 40)
    output = tmp_path / "shipped.jsonl"
    code, _, err = await replay(
        server,
        "export",
        "--types",
        "Shipped",
        "--from",
        start.isoformat(),
        "--to",
        end.isoformat(),
        "--output",
        str(output),
    )
    assert code == 0, err
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    queried = await client.query_all(event_types=["Shipped"], start=start, end=end)
    assert [line["event_id"] for line in lines] == [str(e.event_id) for e in queried]
    assert len(lines) == 14
    assert all(line["event_type"] == "Shipped" for line in lines)


async def test_republish_interrupted_and_resumed_delivers_each_event_once(
    server: RunningServer,
    client: EventStoreClient,
    indexer: IndexerProcess,
    kafka_settings: KafkaSettings,
    opensearch_settings: OpenSearchSettings,
    tmp_path: Path,
) -> None:
    for i in range(30):
        await client.append(
            f"rep-{i % 6}", "Rebuild", [Event("Happened", {"i": i, "j": j}) for j in range(10)]
        )
    await wait_for_count(opensearch_settings, 300)
    target = f"{kafka_settings.topic_prefix.rstrip('.')}-rebuild"  # deleted with the test's topics
    checkpoint = tmp_path / "checkpoint.json"
    args = [
        sys.executable,
        "-m",
        "replayer.main",
        "--server",
        f"127.0.0.1:{server.port}",
        "republish",
        "--aggregate-types",
        "Rebuild",
        "--topic",
        target,
        "--kafka",
        kafka_settings.bootstrap,
        "--checkpoint",
        str(checkpoint),
        "--rate",
        "100",
    ]
    code, out, _ = await replay(
        server,
        "republish",
        "--aggregate-types",
        "Rebuild",
        "--topic",
        target,
        "--dry-run",
        "--checkpoint",
        str(checkpoint),
    )
    assert code == 0
    assert len(out.splitlines()) == 300
    assert not checkpoint.exists(), "a dry run changes nothing"
    first = await asyncio.create_subprocess_exec(*args, stderr=asyncio.subprocess.PIPE)
    # Interrupted once it is sending: a fixed delay could end it while still importing (a
    # loaded machine), before its handlers are installed.
    while not await asyncio.to_thread(records_in, kafka_settings.bootstrap, target):
        assert first.returncode is None
        await asyncio.sleep(0.1)
    first.send_signal(signal.SIGINT)
    _, err = await first.communicate()
    assert first.returncode == 130, err.decode()
    assert "interrupted after" in err.decode()
    assert not json.loads(checkpoint.read_text())["complete"]
    second = await asyncio.create_subprocess_exec(*args[:-2], stderr=asyncio.subprocess.PIPE)
    _, err = await second.communicate()
    assert second.returncode == 0, err.decode()
    assert "resuming after" in err.decode()
    records = await asyncio.to_thread(read_topic, kafka_settings.bootstrap, target, 300)
    ids = [header_map(r)["event_id"] for r in records]
    assert len(ids) == 300
    assert len(set(ids)) == 300
    # Republished records are the server's: CloudEvents too, with the same attributes.
    for record in records:
        assert_describes_its_value(record)


async def test_an_interrupted_republish_returns_to_main(
    server: RunningServer,
    client: EventStoreClient,
    indexer: IndexerProcess,
    kafka_settings: KafkaSettings,
    opensearch_settings: OpenSearchSettings,
    tmp_path: Path,
) -> None:
    """Interrupted, `republish` raises (main alone chooses the exit status, 130) instead of
    leaving the process itself; a dry run leaves no checkpoint even then."""
    await client.append("stop-1", "Halted", [Event("Happened", {"i": i}) for i in range(20)])
    await wait_for_count(opensearch_settings, 20)
    checkpoint = tmp_path / "checkpoint.json"
    out = io.StringIO()
    filters = commands.Filters([], ["Halted"], "", None, None)
    run = asyncio.create_task(
        commands.republish(client, filters, "unused", kafka_settings, 10, True, checkpoint, out)
    )
    while not out.getvalue():  # it is sending (its signal handlers are installed)
        assert not run.done(), run
        await asyncio.sleep(0.05)
    os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(commands.Interrupted) as caught:
        await run
    assert caught.value.code == 130
    assert "interrupted after" in str(caught.value)
    assert 0 < len(out.getvalue().splitlines()) < 20
    assert not checkpoint.exists()


async def test_republish_to_an_unreachable_kafka_is_one_line_and_exit_3(
    server: RunningServer, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "checkpoint.json"
    code, _, err = await replay(
        server,
        "republish",
        "--aggregate-types",
        "Order",
        "--topic",
        "never-made",
        "--kafka",
        "127.0.0.1:1",
        "--checkpoint",
        str(checkpoint),
    )
    assert code == 3, err
    assert "cannot use topic 'never-made' at 127.0.0.1:1" in err
    assert "Traceback" not in err
    assert not checkpoint.exists()
