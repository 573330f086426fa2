"""eventstore-replay: rebuild state from events, export history, re-publish it.

Examples:
  eventstore-replay state user-1 --reducer replayer.examples.users:reduce
  eventstore-replay state order-7 --reducer myapp.orders:reduce --to-version 120 --save-snapshot
  eventstore-replay export --types OrderShipped --from 2026-11-01 --to 2026-11-02 > shipped.jsonl
  eventstore-replay republish --aggregate-types Order --topic orders-rebuild --rate 500
  eventstore-replay republish --types OrderPlaced --topic rebuild --dry-run
  eventstore-replay verify --aggregate-type Order --since-day 2026-11-01 --republish
  eventstore-replay parked
  eventstore-replay schemas register order-placed-v2.json
  eventstore-replay export --aggregate-types Order --upcast latest

The server is EVENTSTORE_SERVER (default 127.0.0.1:50051) or --server. `verify` and `parked`
read the backends directly, configured like the server (EVENTSTORE_CASSANDRA_*,
EVENTSTORE_KAFKA_*, EVENTSTORE_OPENSEARCH_*).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from eventstore import tracing
from eventstore.client import (
    ClientError,
    EventStoreClient,
    RetryPolicy,
    SchemaViewName,
    TlsOptions,
)
from eventstore.config import (
    CassandraSettings,
    ConfigError,
    KafkaSettings,
    LimitSettings,
    OpenSearchSettings,
    PersonalDataSettings,
    TracingSettings,
    load,
)
from eventstore.domain.errors import StorageUnavailable
from eventstore.storage.connection import CassandraConnection
from eventstore.storage.subject_keys import CassandraSubjectKeys
from eventstore.usecases.personal import Keyring
from replayer import commands, parked, summary, verify
from replayer.personal import Resealer
from replayer.reducers import ReplayError
from replayer.verify import VerifyError


def _time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO time such as 2026-11-26 or 2026-11-26T10:00:00Z"
        ) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a day such as 2026-11-26") from exc


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--types", nargs="+", default=[], metavar="EVENT_TYPE", help="only these event types"
    )
    parser.add_argument(
        "--aggregate-types",
        nargs="+",
        default=[],
        metavar="TYPE",
        help="only these aggregate types",
    )
    parser.add_argument("--aggregate-id", default="", help="only this aggregate")
    parser.add_argument(
        "--from", dest="start", type=_time, help="recorded at or after (ISO time; UTC if no zone)"
    )
    parser.add_argument("--to", dest="end", type=_time, help="recorded before (ISO time)")
    _upcast(parser)


def _upcast(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--upcast",
        choices=["stored", "latest"],
        default="stored",
        help="events of types with schemas: as stored (default), or upcast to the latest "
        "schema version",
    )


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="eventstore-replay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    root.add_argument("--server", default=os.environ.get("EVENTSTORE_SERVER", "127.0.0.1:50051"))
    root.add_argument("--debug", action="store_true", help="show tracebacks")
    root.add_argument(
        "--tls-ca",
        default=os.environ.get("EVENTSTORE_CLIENT_TLS_CA"),
        help="CA of the server's certificate: use TLS",
    )
    root.add_argument(
        "--tls-cert",
        default=os.environ.get("EVENTSTORE_CLIENT_TLS_CERT"),
        help="client certificate (mutual TLS)",
    )
    root.add_argument(
        "--tls-key",
        default=os.environ.get("EVENTSTORE_CLIENT_TLS_KEY"),
        help="client key (mutual TLS)",
    )
    root.add_argument(
        "--api-key-file",
        type=Path,
        default=os.environ.get("EVENTSTORE_API_KEY_FILE"),
        help="file holding the API key (or set EVENTSTORE_API_KEY; never on the command line, "
        "where other users could see it)",
    )
    sub = root.add_subparsers(dest="command", required=True)

    state = sub.add_parser(
        "state",
        help="fold an aggregate's events through a reducer and print the state as JSON",
        description="Fold the events of AGGREGATE_ID through REDUCER (a function "
        "reduce(state, event) -> state; state starts as None) and print the final state as JSON. "
        "Starts from the latest snapshot at or below the target that this reducer made, unless "
        "--no-snapshot.\n\n"
        "Example: eventstore-replay state user-1 --reducer replayer.examples.users:reduce",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    state.add_argument("aggregate_id")
    state.add_argument("--reducer", required=True, metavar="MODULE:FUNCTION")
    state.add_argument(
        "--to-version", type=int, default=0, help="stop at this version (default: the last)"
    )
    state.add_argument(
        "--no-snapshot", action="store_true", help="replay every event from version 1"
    )
    state.add_argument(
        "--save-snapshot", action="store_true", help="store the result as a snapshot"
    )
    _upcast(state)

    export = sub.add_parser(
        "export",
        help="write matching events as JSON lines, in (recorded_at, aggregate_id, version) order",
        description="Stream the events matching the filters, in order, as JSON lines.\n\n"
        "Example: eventstore-replay export --types OrderShipped --from 2026-11-01 --to 2026-11-02",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _filters(export)
    export.add_argument("--format", choices=["jsonl"], default="jsonl")
    export.add_argument("--output", type=Path, help="file to write (default: stdout)")

    republish = sub.add_parser(
        "republish",
        help="send matching history to a Kafka topic, resumably",
        description="Send the events matching the filters, in order, to TOPIC in the live "
        "record format (key = aggregate id, protobuf value, headers). Interrupt with Ctrl-C and "
        "run the same command again to resume from the checkpoint file.\n\n"
        "Example: eventstore-replay republish --aggregate-types Order --topic orders-rebuild "
        "--rate 500",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _filters(republish)
    republish.add_argument("--topic", required=True)
    republish.add_argument("--rate", type=float, help="events per second at most")
    republish.add_argument("--dry-run", action="store_true", help="print what would be sent")
    republish.add_argument(
        "--kafka",
        help="bootstrap servers (default: EVENTSTORE_KAFKA_BOOTSTRAP); every other Kafka "
        "setting comes from EVENTSTORE_KAFKA_*, as for the server",
    )
    republish.add_argument("--checkpoint", type=Path, help="default: ./.republish-<topic>.json")

    checking = sub.add_parser(
        "verify",
        help="compare Cassandra with Kafka and the index; republish what Kafka lacks",
        description="Compare the stored events of an aggregate type (Cassandra, the source of "
        "truth) with its Kafka topic and with the search index, and print what is missing, out "
        "of order, repeated or extra. Reads the backends directly (EVENTSTORE_CASSANDRA_*, "
        "EVENTSTORE_KAFKA_*, EVENTSTORE_OPENSEARCH_*), not the server. Costs: it walks the "
        "catalog, reads every event in scope from Cassandra and the whole topic from its "
        "beginning. Events recorded after it starts are left out.\n\n"
        "Exit status: 0 nothing missing, 1 something missing, out of order, extra or repeated "
        "in the index, 2 bad usage or configuration, 3 a backend unreachable, 4 an unexpected "
        "error.\n\n"
        "Example: eventstore-replay verify --aggregate-type Order --since-day 2026-11-01",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    checking.add_argument("--aggregate-type", required=True, metavar="TYPE")
    checking.add_argument(
        "--aggregate-id",
        action="append",
        metavar="ID",
        help="only this aggregate (repeat for several; the catalog is not walked)",
    )
    checking.add_argument(
        "--since-day",
        type=_day,
        metavar="DAY",
        help="aggregates created on or after this day (UTC)",
    )
    checking.add_argument(
        "--until-day",
        type=_day,
        metavar="DAY",
        help="aggregates created on or before this day (UTC)",
    )
    checking.add_argument(
        "--from",
        dest="start",
        type=_time,
        metavar="TIME",
        help="events recorded at or after (ISO time)",
    )
    checking.add_argument(
        "--to", dest="end", type=_time, metavar="TIME", help="events recorded before (ISO time)"
    )
    checking.add_argument("--no-kafka", action="store_true", help="do not read the topic")
    checking.add_argument("--no-index", action="store_true", help="do not read the index")
    checking.add_argument(
        "--republish",
        action="store_true",
        help="send the events missing from Kafka to the topic (in version order per aggregate)",
    )
    checking.add_argument("--json", action="store_true", help="print the full report as JSON")

    listing = sub.add_parser(
        "parked",
        help="list the aggregates whose publication keeps failing (read from Cassandra)",
        description="List the aggregates the relay parked (their publication to Kafka keeps "
        "failing; it retries them with backoff), with the reason. Reads Cassandra directly "
        "(EVENTSTORE_CASSANDRA_*).",
    )
    listing.add_argument("--json", action="store_true", help="print JSON")

    group = sub.add_parser(
        "group-parked",
        help="list, replay or skip the events a consumer group parked (through the server)",
        description="The events one of your consumer groups gave up on (after its attempts), "
        "with the last failure; --replay delivers them to the group's members again, --skip "
        "passes over them. Through the server's API, as the principal of the API key.",
    )
    group.add_argument("group", help="the group's name")
    action = group.add_mutually_exclusive_group()
    action.add_argument("--replay", action="store_true", help="deliver them again")
    action.add_argument("--skip", action="store_true", help="pass over them")
    group.add_argument("--max", type=int, default=1000, help="list at most this many (1000)")
    group.add_argument("--json", action="store_true", help="print JSON lines")

    schemas = sub.add_parser(
        "schemas",
        help="register or list event schemas",
        description="register FILE: register the schema version FILE describes (JSON: "
        "aggregate_type, event_type, schema, and optionally upcast, compatibility, version; "
        "see README, Evolving an event type). list TYPE [EVENT_TYPE]: the versions, as JSON "
        "lines.",
    )
    schema_command = schemas.add_subparsers(dest="schema_command", required=True)
    register = schema_command.add_parser("register", help="register a schema version")
    register.add_argument("file", type=Path)
    listed = schema_command.add_parser("list", help="list schema versions as JSON lines")
    listed.add_argument("aggregate_type")
    listed.add_argument("event_type", nargs="?", default="")
    return root


def _api_key(args: argparse.Namespace) -> str | None:
    if args.api_key_file is not None:
        try:
            return str(args.api_key_file.read_text().strip()) or None
        except OSError as exc:
            raise ReplayError(
                f"cannot read --api-key-file {args.api_key_file}: {exc.strerror}"
            ) from None
    return os.environ.get("EVENTSTORE_API_KEY") or None


async def run_verify(args: argparse.Namespace) -> int:
    report = await verify.verify(
        load(CassandraSettings),
        load(KafkaSettings),
        load(OpenSearchSettings),
        args.aggregate_type,
        aggregate_ids=args.aggregate_id,
        since_day=args.since_day,
        until_day=args.until_day,
        start=args.start,
        end=args.end,
        check_kafka=not args.no_kafka,
        check_index=not args.no_index,
        republish=args.republish,
        limits=load(LimitSettings).to_limits(),
    )
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(summary.render(report))
    return 0 if report.ok else 1


async def run_parked(args: argparse.Namespace) -> int:
    entries = await parked.parked(load(CassandraSettings))
    sys.stdout.write(parked.render(entries, args.json))
    return 0


async def run(args: argparse.Namespace) -> int:
    """The command's exit status (0 unless it found something)."""
    if args.command == "verify":
        return await run_verify(args)
    if args.command == "parked":
        return await run_parked(args)
    await run_client(args)
    return 0


async def run_client(args: argparse.Namespace) -> None:
    tls = TlsOptions(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca else None
    async with EventStoreClient(
        args.server, retry=RetryPolicy(attempts=3), timeout_s=30, tls=tls, api_key=_api_key(args)
    ) as client:
        if args.command == "group-parked":
            await commands.group_parked(
                client, args.group, args.replay, args.skip, args.max, args.json, sys.stdout
            )
            return
        if args.command == "schemas":
            if args.schema_command == "register":
                await commands.register_schema(
                    client, commands.read_schema_file(args.file), sys.stdout
                )
            else:
                await commands.list_schemas(
                    client, args.aggregate_type, args.event_type, sys.stdout
                )
            return
        view: SchemaViewName = "latest" if args.upcast == "latest" else "as_stored"
        if args.command == "state":
            await commands.state(
                client,
                args.aggregate_id,
                args.reducer,
                args.to_version,
                use_snapshot=not args.no_snapshot,
                save_snapshot=args.save_snapshot,
                out=sys.stdout,
                schema_view=view,
            )
            return
        filters = commands.Filters(
            args.types, args.aggregate_types, args.aggregate_id, args.start, args.end, view
        )
        if args.command == "export":
            if args.output:
                with args.output.open("w") as out:
                    count = await commands.export(client, filters, out)
            else:
                count = await commands.export(client, filters, sys.stdout)
            print(f"exported {count} events", file=sys.stderr)
            return
        checkpoint = args.checkpoint or Path(f".republish-{args.topic}.json")
        kafka = load(KafkaSettings)
        if args.kafka:
            kafka = kafka.model_copy(update={"bootstrap": args.kafka})
        async with resealer(args.dry_run) as reseal:
            sent = await commands.republish(
                client,
                filters,
                args.topic,
                kafka,
                args.rate,
                args.dry_run,
                checkpoint,
                sys.stdout,
                reseal,
            )
        print(
            f"{'would send' if args.dry_run else 'sent'} {sent} events to {args.topic}",
            file=sys.stderr,
        )


@contextlib.asynccontextmanager
async def resealer(dry_run: bool) -> AsyncIterator[Resealer]:
    """What seals personal data again before republish sends it (a dry run sends nothing)."""
    masters = None if dry_run else load(PersonalDataSettings).master_keys()
    if masters is None:
        yield Resealer(None)
        return
    connection = await CassandraConnection.open(load(CassandraSettings))
    try:
        keys = await CassandraSubjectKeys.create_store(connection)
        yield Resealer(Keyring(keys, masters))
    finally:
        await connection.close()


async def traced(args: argparse.Namespace) -> int:
    """The command in a span of its own: the calls it makes to the server carry its context,
    so their spans (and the server's backend calls) make one trace."""
    with tracing.span(f"eventstore-replay {args.command}"):
        return await run(args)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        if load(TracingSettings).enabled:
            tracing.configure("eventstore-replay")
        code = asyncio.run(traced(args))
    except (ReplayError, VerifyError, ConfigError) as exc:
        if args.debug:
            raise
        print(f"eventstore-replay: {exc}", file=sys.stderr)
        raise SystemExit(exc.code if isinstance(exc, ReplayError) else 2) from None
    except StorageUnavailable as exc:
        if args.debug:
            raise
        print(f"eventstore-replay: backend unavailable: {exc}", file=sys.stderr)
        raise SystemExit(3) from None
    except ClientError as exc:
        if args.debug:
            raise
        message: Any = exc.message
        if exc.code.name == "UNAVAILABLE":
            message = f"cannot reach the event store at {args.server} (is it running? `make run`)"
        print(f"eventstore-replay: {message}", file=sys.stderr)
        raise SystemExit(3) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as exc:
        # A bug: say so in one line, and never with exit status 1 (which means findings).
        if args.debug:
            raise
        print(
            f"eventstore-replay: unexpected {type(exc).__name__}: {exc} (--debug shows where)",
            file=sys.stderr,
        )
        raise SystemExit(4) from None
    finally:
        tracing.shutdown()  # exports the spans still buffered
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
