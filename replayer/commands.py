"""The replay commands: state, export, republish, schemas register/list."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from eventstore.client import (
    AggregateNotFoundError,
    Compatibility,
    EventStoreClient,
    SchemaFormat,
    SchemaViewName,
)
from eventstore.config import KafkaSettings
from eventstore.domain.events import RecordedEvent
from eventstore.domain.validation import is_json_content_type
from eventstore.ports import PublishFailed
from eventstore.publishing.kafka import ensure_topic, producer_config
from eventstore.wire.records import record_headers, record_timestamp, record_value
from replayer.personal import Resealer
from replayer.progress import Progress
from replayer.reducers import ReplayError, ReplayEvent, load_reducer, state_type


@dataclass(frozen=True)
class Filters:
    event_types: list[str]
    aggregate_types: list[str]
    aggregate_id: str
    start: datetime | None
    end: datetime | None
    #: Not part of `query()`: a republish checkpoint stays valid whichever view resumes it.
    schema_view: SchemaViewName = "as_stored"

    def query(self) -> dict[str, Any]:
        return {
            "event_types": self.event_types,
            "aggregate_types": self.aggregate_types,
            "aggregate_id": self.aggregate_id,
            "start": self.start,
            "end": self.end,
        }

    def key(self) -> str:
        return json.dumps(self.query(), default=str, sort_keys=True)


# --- state --------------------------------------------------------------------------------


async def state(
    client: EventStoreClient,
    aggregate_id: str,
    reducer_spec: str,
    to_version: int,
    use_snapshot: bool,
    save_snapshot: bool,
    out: TextIO,
    schema_view: SchemaViewName = "as_stored",
) -> None:
    reducer = load_reducer(reducer_spec)
    kind = state_type(reducer_spec)
    try:
        info = await client.get_aggregate(aggregate_id)
    except AggregateNotFoundError:
        raise ReplayError(f"aggregate {aggregate_id!r} has no events") from None
    target = min(to_version, info.version) if to_version else info.version
    current: Any = None
    version = 0
    if use_snapshot:
        snapshot = await client.get_snapshot(aggregate_id, max_version=target)
        if snapshot is not None and snapshot.state_type == kind:
            current = json.loads(snapshot.state)
            version = snapshot.version
            print(f"starting from the snapshot at version {version}", file=sys.stderr)
        elif snapshot is not None:
            print(
                f"ignoring the snapshot at version {snapshot.version}: it was made by "
                f"{snapshot.state_type!r}, not {kind!r}",
                file=sys.stderr,
            )
    progress = Progress(f"replaying {aggregate_id}", target - version)
    if version < target:
        async for event in client.read(
            aggregate_id,
            from_version=version + 1,
            max_count=target - version,
            schema_view=schema_view,
        ):
            try:
                current = reducer(current, ReplayEvent.of(event))
            except Exception as exc:
                raise ReplayError(
                    f"reducer {reducer_spec} failed on version {event.version} "
                    f"({event.event_type}): {type(exc).__name__}: {exc}",
                    code=1,
                ) from exc
            version = event.version
            progress.advance()
    progress.finish()
    if save_snapshot and version > 0:
        encoded = json.dumps(current, separators=(",", ":")).encode()
        await client.save_snapshot(aggregate_id, version, encoded, kind)
        print(f"snapshot saved at version {version}", file=sys.stderr)
    json.dump(current, out, indent=2, sort_keys=True, default=str)
    out.write("\n")


# --- export -------------------------------------------------------------------------------


def to_json_line(event: RecordedEvent) -> str:
    line: dict[str, Any] = {
        "event_id": str(event.event_id),
        "aggregate_id": event.aggregate_id,
        "aggregate_type": event.aggregate_type,
        "version": event.version,
        "event_type": event.event_type,
        "recorded_at": event.recorded_at.isoformat(timespec="milliseconds"),
        "content_type": event.content_type,
        "metadata": dict(event.metadata),
    }
    if is_json_content_type(event.content_type) and event.data:
        line["data"] = json.loads(event.data)
    else:
        line["data_base64"] = base64.b64encode(event.data).decode()
    return json.dumps(line, separators=(",", ":"), sort_keys=True)


async def pages(
    client: EventStoreClient, filters: Filters, token: str = "", page_size: int = 500
) -> AsyncIterator[tuple[str, list[RecordedEvent], str, int | None]]:
    """(token used, events, next token, total on the first page) per page of the query."""
    first = True
    while True:
        page = await client.query_events(
            page_token=token,
            page_size=page_size,
            count_total=first,
            schema_view=filters.schema_view,
            **filters.query(),
        )
        yield token, page.events, page.next_page_token, page.total_hits
        if not page.next_page_token:
            return
        token, first = page.next_page_token, False


async def export(client: EventStoreClient, filters: Filters, out: TextIO) -> int:
    written = 0
    progress: Progress | None = None
    async for _, events, _, total in pages(client, filters):
        progress = progress or Progress("exporting", total or None)
        for event in events:
            out.write(to_json_line(event) + "\n")
        written += len(events)
        progress.advance(len(events))
    if progress:
        progress.finish()
    out.flush()
    return written


# --- republish ----------------------------------------------------------------------------


class Interrupted(ReplayError):
    """SIGINT or SIGTERM stopped a republish; its checkpoint says where to resume."""

    def __init__(self, sent: int) -> None:
        super().__init__(
            f"interrupted after {sent} events; run the same command again to resume", code=130
        )


async def republish(
    client: EventStoreClient,
    filters: Filters,
    topic: str,
    kafka: KafkaSettings,
    rate: float | None,
    dry_run: bool,
    checkpoint_path: Path,
    out: TextIO,
    reseal: Resealer | None = None,
) -> int:
    """Send every matching event, in order, to `topic`; resumable from `checkpoint_path`.

    The checkpoint (page token + position in the page) is written after the producer has
    confirmed everything before it, and again when interrupted (SIGINT/SIGTERM), so a resumed
    run sends each event exactly once. Only a hard kill can repeat the events sent since the
    last checkpoint (at most one page); they carry the same (aggregate_id, version) to drop.
    A dry run writes the records it would send to `out`, and no checkpoint.
    Raises Interrupted when stopped, ReplayError (code 3) when Kafka refuses or cannot be used.
    """
    checkpoint = _read_checkpoint(checkpoint_path, filters, topic) if not dry_run else None
    if checkpoint and checkpoint.get("complete"):
        print(
            f"already complete ({checkpoint['sent']} events); delete {checkpoint_path} to redo",
            file=sys.stderr,
        )
        return 0
    token = checkpoint["page_token"] if checkpoint else ""
    skip = checkpoint["done_in_page"] if checkpoint else 0
    sent = checkpoint["sent"] if checkpoint else 0
    if checkpoint:
        print(f"resuming after {sent} events", file=sys.stderr)
    producer: Producer | None = None
    if not dry_run:
        await _ensure_topic(kafka, topic)
        # As large as any record of the server's (a topic we create takes as much). Unlike the
        # server's, this producer gives up on a record after librdkafka's message.timeout.ms:
        # Kafka gone for that long ends the run with an error, resumable from its checkpoint.
        producer = Producer(producer_config(kafka, kafka.max_message_bytes))
    failures: list[str] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    interval = 1.0 / rate if rate else 0.0
    next_at = time.monotonic()
    progress: Progress | None = None

    def save(page_token: str, done: int, complete: bool = False) -> None:
        if producer is None:
            return
        while producer.flush(5) > 0:
            pass
        if failures:
            raise ReplayError(f"Kafka refused records: {failures[0]}", code=3)
        _write_checkpoint(checkpoint_path, filters, topic, page_token, done, sent, complete)

    try:
        async for page_token, events, next_token, total in pages(client, filters, token):
            progress = progress or Progress(
                f"republishing to {topic}", (total + sent) if total else None
            )
            for index, event in enumerate(events):
                if index < skip:
                    continue
                if stop.is_set():
                    save(page_token, index)
                    raise Interrupted(sent)
                if interval:
                    next_at += interval
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                if producer is None:
                    out.write(
                        json.dumps(
                            {
                                "topic": topic,
                                "key": event.aggregate_id,
                                "version": event.version,
                                "event_type": event.event_type,
                                "event_id": str(event.event_id),
                            }
                        )
                        + "\n"
                    )
                else:
                    # Kafka holds personal data sealed only: sealed again before it leaves.
                    event = await (reseal or Resealer(None))(event)
                    producer.produce(
                        topic,
                        key=event.aggregate_id.encode(),
                        value=record_value(event),
                        headers=record_headers(event),
                        timestamp=record_timestamp(event),
                        on_delivery=lambda err, _msg: failures.append(str(err)) if err else None,
                    )
                    producer.poll(0)
                sent += 1
                progress.advance()
            skip = 0
            save(next_token, 0, complete=not next_token)
    finally:
        if progress:
            progress.finish()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return sent


def _read_checkpoint(path: Path, filters: Filters, topic: str) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except ValueError as exc:
        raise ReplayError(f"checkpoint file {path} is not valid JSON: {exc}") from exc
    if data.get("filters") != filters.key() or data.get("topic") != topic:
        raise ReplayError(
            f"checkpoint file {path} belongs to another republish (other filters or topic)"
        )
    return data


def _write_checkpoint(
    path: Path, filters: Filters, topic: str, page_token: str, done: int, sent: int, complete: bool
) -> None:
    body = {
        "filters": filters.key(),
        "topic": topic,
        "page_token": page_token,
        "done_in_page": done,
        "sent": sent,
        "complete": complete,
    }
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(body))
    os.replace(partial, path)  # atomic: a crash leaves the old checkpoint or the new one


async def _ensure_topic(kafka: KafkaSettings, topic: str) -> None:
    try:
        await ensure_topic(AdminClient(kafka.client_config()), topic, kafka)
    except PublishFailed as exc:
        raise ReplayError(
            f"cannot use topic {topic!r} at {kafka.bootstrap}: {exc}", code=3
        ) from exc


async def group_parked(
    client: EventStoreClient,
    group: str,
    replay: bool,
    skip: bool,
    max_count: int,
    as_json: bool,
    out: TextIO,
) -> None:
    """List a consumer group's parked events, or replay or skip them all."""
    if replay or skip:
        count = await client.replay_parked(group, skip=skip)
        out.write(f"{'skipped' if skip else 'replayed'} {count} parked events of {group}\n")
        return
    for parked in await client.parked(group, max_count):
        event = parked.event
        if as_json:
            row = {
                "position": parked.position,
                "aggregate_id": event.aggregate_id,
                "version": event.version,
                "event_type": event.event_type,
                "event_id": str(event.event_id),
                "attempts": parked.attempts,
                "reason": parked.reason,
                "parked_at": parked.parked_at.isoformat(),
            }
            out.write(json.dumps(row) + "\n")
        else:
            out.write(
                f"{parked.position}\t{event.aggregate_id} v{event.version} {event.event_type}"
                f"\t{parked.attempts} attempts\t{parked.parked_at.isoformat()}\t{parked.reason}\n"
            )


# --- schemas ------------------------------------------------------------------------------


def read_schema_file(path: Path) -> dict[str, Any]:
    """The `register_schema` arguments a JSON file describes:

    {"aggregate_type": "Order", "event_type": "OrderPlaced", "schema": {...JSON Schema...},
     "upcast": [{"op": "rename", "path": "/name", "to": "full_name"}, ...],
     "compatibility": "backward", "version": 2}

    or, for protobuf, "format": "protobuf", "descriptor_set": "FILE" (a serialized
    FileDescriptorSet, relative to the JSON file) and "message_name". Only aggregate_type,
    event_type and the schema are required."""
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReplayError(f"cannot read {path}: {exc}", code=2) from None
    if not isinstance(spec, dict):
        raise ReplayError(f"{path}: must hold a JSON object", code=2)
    known = {
        "aggregate_type",
        "event_type",
        "schema",
        "upcast",
        "compatibility",
        "version",
        "format",
        "descriptor_set",
        "message_name",
    }
    if set(spec) - known:
        raise ReplayError(f"{path}: unknown keys {sorted(set(spec) - known)}", code=2)
    try:
        schema_format = SchemaFormat(spec.get("format", "json_schema"))
        compatibility = Compatibility(spec["compatibility"]) if "compatibility" in spec else None
    except ValueError as exc:
        raise ReplayError(f"{path}: {exc}", code=2) from None
    if schema_format is SchemaFormat.PROTOBUF:
        try:
            document = (path.parent / spec["descriptor_set"]).read_bytes()
        except (KeyError, OSError) as exc:
            raise ReplayError(f"{path}: descriptor_set: {exc}", code=2) from None
    elif "schema" in spec:
        document = json.dumps(spec["schema"]).encode()
    else:
        raise ReplayError(f"{path}: needs a schema", code=2)
    return {
        "aggregate_type": str(spec.get("aggregate_type", "")),
        "event_type": str(spec.get("event_type", "")),
        "document": document,
        "upcast": spec.get("upcast", []),
        "compatibility": compatibility,
        "schema_format": schema_format,
        "message_name": str(spec.get("message_name", "")),
        "version": int(spec.get("version", 0)),
    }


async def register_schema(client: EventStoreClient, spec: dict[str, Any], out: TextIO) -> None:
    """Register the version `spec` (from `read_schema_file`) describes."""
    registered = await client.register_schema(**spec)
    out.write(
        f"{registered.aggregate_type}/{registered.event_type} version {registered.version} "
        f"({registered.compatibility.value})\n"
    )


async def list_schemas(
    client: EventStoreClient, aggregate_type: str, event_type: str, out: TextIO
) -> None:
    for schema in await client.list_schemas(aggregate_type, event_type):
        line = {
            "aggregate_type": schema.aggregate_type,
            "event_type": schema.event_type,
            "version": schema.version,
            "format": schema.format.value,
            "compatibility": schema.compatibility.value,
            "upcast": [op.to_json() for op in schema.upcast],
            "registered_by": schema.registered_by,
            "registered_at": (
                schema.registered_at.isoformat(timespec="milliseconds")
                if schema.registered_at
                else None
            ),
        }
        out.write(json.dumps(line, sort_keys=True) + "\n")
