"""Consumer groups (#17): members share a group's aggregates, each aggregate in version order to
one member at a time; acknowledged events are not handed out again when partitions move; a
failing event is parked after its attempts while the others flow, and can be replayed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from eventstore.client import (
    Event,
    EventStoreClient,
    GroupDelivery,
    GroupMember,
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from eventstore.config import ServerSettings
from eventstore.server import RunningServer
from eventstore.v1 import eventstore_pb2 as pb
from tests.integration.conftest import StartServer
from tests.integration.principals import KEYS, Connect
from tests.integration.test_replay import replay
from tests.support import unique

pytestmark = pytest.mark.integration

Key = tuple[str, int]


def key(delivery: GroupDelivery) -> Key:
    return (delivery.event.aggregate_id, delivery.event.version)


class Member:
    """A group member read in the background; `decide` says, per delivery, whether to
    acknowledge it (True), reject it (False) or leave it unanswered (None)."""

    def __init__(
        self,
        stream: GroupMember,
        decide: Callable[[GroupDelivery], bool | None] = lambda _: True,
    ) -> None:
        self.stream = stream
        self.decide = decide
        self.delivered: list[GroupDelivery] = []
        self.acked: list[Key] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Member:
        await self.stream.__aenter__()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.stream.__aexit__(None, None, None)

    async def _run(self) -> None:
        async for delivery in self.stream:
            self.delivered.append(delivery)
            verdict = self.decide(delivery)
            if verdict is True:
                await self.stream.ack(delivery)
                self.acked.append(key(delivery))
            elif verdict is False:
                await self.stream.nack(delivery, reason="handler failed")

    async def wait_for(self, predicate: Callable[[Member], bool], within: float = 60) -> None:
        deadline = time.monotonic() + within
        while not predicate(self):
            assert self._task is not None
            if self._task.done():
                self._task.result()
                raise AssertionError("member ended early")
            assert time.monotonic() < deadline, f"timed out with {len(self.delivered)} deliveries"
            await asyncio.sleep(0.05)


async def append_rounds(
    client: EventStoreClient, kind: str, aggregates: list[str], rounds: int
) -> list[Key]:
    written = []
    for n in range(rounds):
        for aggregate in aggregates:
            result = await client.append(aggregate, kind, [Event("Happened", {"n": n})])
            written.append((aggregate, result.last_version))
    return written


def in_version_order(deliveries: list[GroupDelivery]) -> bool:
    seen: dict[str, list[int]] = defaultdict(list)
    for delivery in deliveries:
        seen[delivery.event.aggregate_id].append(delivery.event.version)
    return all(v == sorted(v) for v in seen.values())


async def test_a_member_gets_every_event_in_order_and_the_group_resumes_after_it(
    client: EventStoreClient,
) -> None:
    kind, group = unique("Grouped").replace("-", ""), unique("g")
    aggregates = [unique("agg") for _ in range(6)]
    written = await append_rounds(client, kind, aggregates, 3)
    async with Member(client.subscribe_group(group, aggregate_types=[kind])) as first:
        await first.wait_for(lambda m: len(m.acked) == len(written))
        assert sorted(first.acked) == sorted(written)
        assert in_version_order(first.delivered)
        assert {d.attempt for d in first.delivered} == {1}
        await asyncio.sleep(1.5)  # positions are committed every second, and when leaving
    later = await append_rounds(client, kind, aggregates[:2], 1)
    async with Member(client.subscribe_group(group, aggregate_types=[kind])) as second:
        await second.wait_for(lambda m: len(m.acked) == len(later))
        await asyncio.sleep(1.0)
        assert sorted(second.acked) == sorted(later)  # nothing the first one acknowledged


async def test_acknowledged_events_are_not_handed_out_again_when_a_partition_moves(
    client: EventStoreClient,
) -> None:
    """The commit point stays at an unacknowledged event; the events after it that were
    acknowledged travel with the commit, so the next owner skips exactly them."""
    kind, group = unique("Held").replace("-", ""), unique("g")
    held = unique("held")
    aggregates = [held, *(unique("agg") for _ in range(20))]
    written = await append_rounds(client, kind, aggregates, 3)
    # Leave held's first event unanswered: its later versions wait behind it; all else flows.
    holding = Member(
        client.subscribe_group(group, aggregate_types=[kind], max_in_flight=100),
        decide=lambda d: None if d.event.aggregate_id == held else True,
    )
    async with holding:
        await holding.wait_for(lambda m: len(m.acked) == len(written) - 3)
        assert [key(d) for d in holding.delivered if d.event.aggregate_id == held] == [(held, 1)]
        await asyncio.sleep(1.5)
    async with Member(client.subscribe_group(group, aggregate_types=[kind])) as next_owner:
        await next_owner.wait_for(lambda m: len(m.acked) == 3)
        await asyncio.sleep(1.5)  # anything more would show up now
        assert next_owner.acked == [(held, 1), (held, 2), (held, 3)]


@pytest.fixture
async def quick_server(server_settings: ServerSettings, start_server: StartServer) -> RunningServer:
    settings = server_settings.model_copy(
        update={"group_max_attempts": 3, "group_max_backoff_s": 0.2, "group_ack_timeout_s": 5.0}
    )
    return await start_server(settings)


@pytest.fixture
async def quick_client(quick_server: RunningServer) -> AsyncIterator[EventStoreClient]:
    async with EventStoreClient(f"127.0.0.1:{quick_server.port}") as c:
        yield c


async def cli(server: RunningServer, *args: str) -> list[dict[str, Any]]:
    """eventstore-replay against `server`: its JSON lines."""
    status, out, err = await replay(server, *args, within=60)
    assert status == 0, err
    return [json.loads(line) for line in out.splitlines()]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_failing_event_is_parked_while_the_others_flow_and_can_be_replayed(
    quick_server: RunningServer, quick_client: EventStoreClient
) -> None:
    client = quick_client
    kind, group = unique("Failing").replace("-", ""), unique("g")
    poison = unique("poison")
    aggregates = [poison, *(unique("agg") for _ in range(8))]
    await client.append(poison, kind, [Event("Bad", {})])
    written = [(poison, 1), *await append_rounds(client, kind, aggregates, 2)]
    # The server runs in this process: its metrics are this registry's.
    parked_before = sample("eventstore_group_parked_total")
    retried_before = sample("eventstore_group_deliveries_total", attempt="retry")
    failing = Member(
        client.subscribe_group(group, aggregate_types=[kind]),
        decide=lambda d: d.event.event_type != "Bad",
    )
    async with failing:
        # Every other event, and the poison aggregate's own later ones once it is parked.
        await failing.wait_for(lambda m: len(m.acked) == len(written) - 1)
        attempts = [d.attempt for d in failing.delivered if d.event.event_type == "Bad"]
        assert attempts == [1, 2, 3]
        assert in_version_order([d for d in failing.delivered if d.attempt == 1])
        parked = await client.parked(group)
        assert [(p.event.aggregate_id, p.event.version) for p in parked] == [(poison, 1)]
        listed = await cli(quick_server, "group-parked", group, "--json")
        assert [(r["aggregate_id"], r["version"], r["reason"]) for r in listed] == [
            (poison, 1, "handler failed")
        ]
        assert parked[0].attempts == 3
        assert parked[0].reason == "handler failed"
        assert sample("eventstore_group_parked_total") - parked_before == 1
        assert sample("eventstore_group_deliveries_total", attempt="retry") - retried_before == 2
        # Fixed: replayed, it is delivered again (and acknowledged this time).
        failing.decide = lambda _: True
        assert await client.replay_parked(group) == 1
        await failing.wait_for(lambda m: (poison, 1) in m.acked)
        assert await client.parked(group) == []
        assert await client.replay_parked(group) == 0


async def test_undecodable_or_misplaced_requests_end_the_membership_cleanly(
    server: RunningServer,
) -> None:
    join = pb.SubscribeGroupRequest(join=pb.JoinGroup(group=unique("g"))).SerializeToString()
    ack = pb.SubscribeGroupRequest(ack=pb.GroupAck(delivery_ids=[1])).SerializeToString()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        for messages in ([b"\xff\xff\xff"], [ack], [join, b"\xff\xff\xff"], [join, join]):
            call = channel.stream_stream(
                "/eventstore.v1.EventStore/SubscribeGroup",
                request_serializer=lambda raw: raw,
                response_deserializer=pb.SubscribeGroupResponse.FromString,
            )(iter(messages), timeout=30)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in call:
                    pass
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, messages


async def test_a_bad_first_request_is_refused_by_field(client: EventStoreClient) -> None:
    async def join() -> None:
        async with client.subscribe_group("has space") as member:
            async for _ in member:
                pass

    with pytest.raises(InvalidArgumentError) as caught:
        await join()
    assert caught.value.fields == ["join.group"]


class MemberProcess:
    """tests/group_member.py in a process of its own, and what it wrote."""

    def __init__(self, address: str, group: str, kind: str, out: Path) -> None:
        self.args = (address, group, kind, str(out))
        self.out = out
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.group_member", *self.args
        )

    def lines(self) -> list[list[str]]:
        return (
            [line.split() for line in self.out.read_text().splitlines()]
            if self.out.exists()
            else []
        )

    def delivered(self) -> list[tuple[str, int, int]]:
        return [(a, int(v), int(n)) for kind, a, v, n in (x for x in self.lines() if x[0] == "d")]

    def acked(self) -> list[Key]:
        return [(line[1], int(line[2])) for line in self.lines() if line[0] == "a"]

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()


async def test_members_share_a_group_and_a_killed_member_loses_nothing(
    server_settings: ServerSettings, start_server: StartServer, tmp_path: Path
) -> None:
    # Six partitions: four members each have a share of the events (and one the retry topic).
    kafka = server_settings.kafka.model_copy(update={"partitions": 6})
    server = await start_server(server_settings.model_copy(update={"kafka": kafka}))
    async with EventStoreClient(f"127.0.0.1:{server.port}") as client:
        await _share_and_kill(server, client, tmp_path)


async def _share_and_kill(server: RunningServer, client: EventStoreClient, tmp_path: Path) -> None:
    kind, group = unique("Shared").replace("-", ""), unique("g")
    aggregates = [unique("agg") for _ in range(50)]
    address = f"127.0.0.1:{server.port}"
    # The type's topic exists before anyone joins (members find new topics within seconds).
    first = await append_rounds(client, kind, aggregates[:10], 1)
    members = [MemberProcess(address, group, kind, tmp_path / f"m{i}.log") for i in range(4)]
    for member in members[:3]:
        await member.start()
    deadline = time.monotonic() + 60
    while not all(["joined"] in m.lines() for m in members[:3]):
        assert time.monotonic() < deadline, "members did not join"
        await asyncio.sleep(0.1)
    written: list[Key] = list(first)
    rng = random.Random(17)
    reached = {110: asyncio.Event(), 210: asyncio.Event()}

    late_member_served = asyncio.Event()

    async def writer() -> None:
        # Until the member that joins later has had a share (at most 60 s).
        stop = time.monotonic() + 60
        while not late_member_served.is_set() and time.monotonic() < stop:
            await asyncio.sleep(0.01)
            aggregate = rng.choice(aggregates)
            result = await client.append(aggregate, kind, [Event("Happened", {})])
            written.append((aggregate, result.last_version))
            if len(written) in reached:
                reached[len(written)].set()

    writers = [asyncio.create_task(writer()) for _ in range(8)]
    await reached[110].wait()
    # Kill a member that is receiving (one may hold only the group's retry partition).
    victim = max(members[:3], key=lambda m: len(m.acked()))
    killed_at = len(victim.acked())
    await victim.kill()  # mid-stream: it had deliveries out, surely unacknowledged ones
    await reached[210].wait()
    await members[3].start()  # a member joining later takes partitions from the others
    deadline = time.monotonic() + 60
    while len(members[3].acked()) < 5:
        assert time.monotonic() < deadline, "the member that joined later got no share"
        await asyncio.sleep(0.1)
    late_member_served.set()
    await asyncio.gather(*writers)
    try:
        deadline = time.monotonic() + 120
        while not set(written) <= {k for m in members for k in m.acked()}:
            missing = set(written) - {k for m in members for k in m.acked()}
            assert time.monotonic() < deadline, f"{len(missing)} events never acknowledged"
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)  # anything delivered again would show up now
    finally:
        for member in members:
            await member.stop()
    assert killed_at > 0, "the killed member had received nothing"
    for member in members:
        # Per member and aggregate, deliveries never go back in version (a retry repeats one).
        last: dict[str, int] = {}
        for aggregate, version, _ in member.delivered():
            assert version >= last.get(aggregate, 0), (member.out.name, aggregate)
            last[aggregate] = version
    # An event is delivered again only if it was not acknowledged where it was out: at the
    # killed member, or in flight (sent, not yet received) when its partition moved, which
    # is at most each member's max_in_flight (8) per partition move it took part in.
    survivors_acked = {k for m in members if m is not victim for k in m.acked()}
    again = [
        k for k in survivors_acked if sum(d[:2] == k for m in members for d in m.delivered()) > 1
    ]
    print(
        f"group: {len(written)} events, acked by {[len(m.acked()) for m in members]}, killed "
        f"after {killed_at}, delivered again though acknowledged by a survivor: {len(again)}"
    )
    assert len(again) <= 3 * 8, again


async def test_a_new_group_from_a_time_gets_exactly_what_was_recorded_since(
    client: EventStoreClient,
) -> None:
    kind, group = unique("Timed").replace("-", ""), unique("g")
    aggregates = [unique("agg") for _ in range(5)]
    await append_rounds(client, kind, aggregates, 1)
    await asyncio.sleep(0.01)
    since = datetime.now(UTC)
    later = await append_rounds(client, kind, aggregates, 2)
    async with Member(client.subscribe_group(group, aggregate_types=[kind], start=since)) as m:
        await m.wait_for(lambda m: len(m.acked) == len(later))
        await asyncio.sleep(1.0)
        assert sorted(m.acked) == sorted(later)


async def test_groups_need_the_subscribe_grant_and_count_toward_the_subscription_quota(
    connect: Connect,
) -> None:
    payments = connect(KEYS["payments"])  # subscribes to Payment only; 1 subscription at most

    async def first_delivery(member: GroupMember) -> None:
        async with member as stream:
            async for _ in stream:
                return

    with pytest.raises(PermissionDeniedError):
        await first_delivery(payments.subscribe_group("g", aggregate_types=["Order"]))
    await payments.append(unique("payment"), "Payment", [Event("Captured", {})])
    async with Member(payments.subscribe_group("g", aggregate_types=["Payment"])) as member:
        await member.wait_for(lambda m: len(m.acked) == 1)
        with pytest.raises(ResourceExhaustedError) as caught:
            await first_delivery(payments.subscribe_group("h", aggregate_types=["Payment"]))
        assert caught.value.quota == "max_subscriptions"
