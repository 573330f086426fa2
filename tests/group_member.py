"""A consumer group member in a process of its own, for tests that kill one (SIGKILL):

    python -m tests.group_member ADDRESS GROUP AGGREGATE_TYPE OUT_FILE

Writes one line per delivery (`d <aggregate> <version> <attempt>`) and one after sending its
acknowledgement (`a <aggregate> <version>`), flushed at once, and acknowledges everything."""

from __future__ import annotations

import asyncio
import sys

from eventstore.client import EventStoreClient


async def main(address: str, group: str, aggregate_type: str, out: str) -> None:
    with open(out, "a", buffering=1) as lines:  # noqa: ASYNC230 - a line per event, flushed
        async with (
            EventStoreClient(address) as client,
            client.subscribe_group(
                group, aggregate_types=[aggregate_type], max_in_flight=8
            ) as member,
        ):
            lines.write("joined\n")
            async for delivery in member:
                event = delivery.event
                lines.write(f"d {event.aggregate_id} {event.version} {delivery.attempt}\n")
                await member.ack(delivery)
                lines.write(f"a {event.aggregate_id} {event.version}\n")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
