// Uses the event store from TypeScript through the generated client (src/gen, ts-proto over
// @grpc/grpc-js): appends to a fresh aggregate, reads it back, provokes a version conflict and
// reads its details, and subscribes to the aggregate until caught up. Exits 1 with a message on
// the first thing that is not as expected; make test runs it against a real server
// (tests/integration/test_other_languages.py).
//
//   node dist/example.js [--api-key KEY] [--aggregate ID] [--aggregate-type TYPE] ADDRESS
import { randomBytes, randomUUID } from "node:crypto";
import { parseArgs } from "node:util";

import { credentials, Metadata, status, type ServiceError } from "@grpc/grpc-js";

import {
  type AppendResponse,
  type Event,
  EventData,
  EventStoreClient,
  ReadAggregateRequest,
  SubscribeRequest,
  WrongExpectedVersion,
} from "./gen/eventstore/v1/eventstore";
import { ErrorInfo } from "./gen/google/rpc/error_details";
import { Status } from "./gen/google/rpc/status";

const TYPE_URL_PREFIX = "type.googleapis.com/";

class Mismatch extends Error {}

function check(condition: boolean, message: string): asserts condition {
  if (!condition) throw new Mismatch(message);
}

/** A unary call as a promise. */
function unary<Req, Res>(
  call: (
    request: Req,
    metadata: Metadata,
    options: { deadline: Date },
    callback: (error: ServiceError | null, response: Res) => void,
  ) => unknown,
  request: Req,
  metadata: Metadata,
  deadline: Date,
): Promise<Res> {
  return new Promise((resolve, reject) =>
    call(request, metadata, { deadline }, (error, response) => (error ? reject(error) : resolve(response))),
  );
}

/**
 * The details of a refused append: our WrongExpectedVersion and the ErrorInfo's reason, from the
 * google.rpc.Status the server sends in the grpc-status-details-bin trailer (never parse the
 * message text).
 */
function versionConflict(error: ServiceError): { conflict: WrongExpectedVersion; reason: string } {
  check(error.code === status.FAILED_PRECONDITION, `want FAILED_PRECONDITION, got ${error.code}: ${error.details}`);
  const [encoded] = error.metadata.get("grpc-status-details-bin");
  check(encoded instanceof Buffer, "no grpc-status-details-bin trailer");
  let conflict: WrongExpectedVersion | undefined;
  let reason = "";
  for (const detail of Status.decode(encoded).details) {
    if (detail.typeUrl === TYPE_URL_PREFIX + "eventstore.v1.WrongExpectedVersion") {
      conflict = WrongExpectedVersion.decode(detail.value);
    } else if (detail.typeUrl === TYPE_URL_PREFIX + "google.rpc.ErrorInfo") {
      const info = ErrorInfo.decode(detail.value);
      if (info.domain === "eventstore.v1") reason = info.reason;
    }
  }
  check(conflict !== undefined, "no eventstore.v1.WrongExpectedVersion in the status details");
  return { conflict, reason };
}

function checkEvents(what: string, got: Event[], sent: EventData[], aggregateType: string): void {
  check(got.length === sent.length, `${what}: want ${sent.length} events, got ${got.length}`);
  got.forEach((event, i) => {
    const want = sent[i];
    check(
      event.version === i + 1 &&
        event.eventId === want.eventId &&
        event.eventType === want.eventType &&
        event.aggregateType === aggregateType &&
        Buffer.from(event.data).equals(Buffer.from(want.data)) &&
        event.metadata["client"] === want.metadata["client"],
      `${what}: event ${i}: want version ${i + 1}, id ${want.eventId}, type ${want.eventType}, ` +
        `data ${Buffer.from(want.data)}; got version ${event.version}, id ${event.eventId}, ` +
        `type ${event.eventType}, data ${Buffer.from(event.data)}`,
    );
  });
}

function eventData(eventType: string, data: object): EventData {
  // Our own event ids: a retry of the same request (after UNAVAILABLE, say) cannot append twice.
  // fromPartial: fields the API adds later (it only adds) take their defaults.
  return EventData.fromPartial({
    eventId: randomUUID(),
    eventType,
    data: Buffer.from(JSON.stringify(data)),
    contentType: "application/json",
    metadata: { client: "typescript" },
  });
}

async function run(
  address: string,
  aggregateId: string,
  aggregateType: string,
  apiKey: string | undefined,
  deadline: Date,
): Promise<string> {
  const client = new EventStoreClient(address, credentials.createInsecure());
  const metadata = new Metadata();
  if (apiKey) metadata.set("authorization", `Bearer ${apiKey}`);
  try {
    // 1. Append two events to an aggregate that must not exist yet.
    const events = [eventData("ItemAdded", { item: "apple", quantity: 1 }), eventData("ItemAdded", { item: "pear", quantity: 2 })];
    const appended: AppendResponse = await unary(
      client.append.bind(client),
      { aggregateId, aggregateType, expectedVersion: { noStream: {} }, events },
      metadata,
      deadline,
    );
    check(
      appended.firstVersion === 1 && appended.lastVersion === 2 && appended.eventIds.length === 2,
      `append: want versions 1..2 and 2 ids, got ${appended.firstVersion}..${appended.lastVersion} and ${appended.eventIds.length} ids`,
    );

    // 2. Read the aggregate back: a stream of pages, in version order.
    const read: Event[] = [];
    for await (const page of client.readAggregate(
      ReadAggregateRequest.fromPartial({ aggregateId, fromVersion: 0, direction: 0, maxCount: 0 }),
      metadata,
      { deadline },
    )) {
      read.push(...page.events);
    }
    checkEvents("read", read, events, aggregateType);

    // 3. Append at a stale version: FAILED_PRECONDITION with the conflict in the details.
    let refusal: ServiceError | undefined;
    try {
      await unary(
        client.append.bind(client),
        {
          aggregateId,
          aggregateType,
          expectedVersion: { exact: 1 },
          events: [eventData("ItemRemoved", { item: "apple" })],
        },
        metadata,
        deadline,
      );
    } catch (error) {
      refusal = error as ServiceError;
    }
    check(refusal !== undefined, "stale append: want FAILED_PRECONDITION, the append succeeded");
    const { conflict, reason } = versionConflict(refusal);
    check(
      reason === "WRONG_EXPECTED_VERSION" &&
        conflict.aggregateId === aggregateId &&
        conflict.actualVersion === 2 &&
        conflict.expected?.exact === 1,
      `stale append: want WRONG_EXPECTED_VERSION for ${aggregateId}, expected 1, actual 2; got ${reason} ` +
        `for ${conflict.aggregateId}, expected ${JSON.stringify(conflict.expected)}, actual ${conflict.actualVersion}`,
    );

    // 4. Subscribe from the beginning: the history, then the caught_up marker (then live
    // events, which we do not wait for: cancelling ends the stream).
    const subscription = client.subscribe(
      SubscribeRequest.fromPartial({ aggregateId, fromBeginning: {} }),
      metadata,
      { deadline },
    );
    const history: Event[] = [];
    let caughtUp = false;
    let checkpoint = "";
    try {
      for await (const message of subscription) {
        checkpoint = message.checkpoint;
        if (message.event) history.push(message.event);
        if (message.caughtUp) {
          caughtUp = true;
          break;
        }
      }
    } finally {
      subscription.cancel();
    }
    check(caughtUp, "subscribe: the stream ended before caught_up");
    check(checkpoint !== "", "subscribe: the caught_up marker has no checkpoint");
    checkEvents("subscribe", history, events, aggregateType);

    return (
      `typescript example: appended versions ${appended.firstVersion}..${appended.lastVersion} to ${aggregateId}, ` +
      `read ${read.length} events back, stale append refused (${reason}, actual version ${conflict.actualVersion}), ` +
      `subscription caught up after ${history.length} events`
    );
  } finally {
    client.close();
  }
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    options: {
      "api-key": { type: "string", default: process.env.EVENTSTORE_API_KEY },
      aggregate: { type: "string" },
      "aggregate-type": { type: "string", default: "TsExample" },
      "timeout-s": { type: "string", default: "30" },
    },
    allowPositionals: true,
  });
  if (positionals.length !== 1) {
    console.error("usage: example.js [--api-key KEY] [--aggregate ID] [--aggregate-type TYPE] [--timeout-s S] ADDRESS (host:port, plaintext)");
    process.exit(2);
  }
  const aggregateId = values.aggregate ?? `ts-example-${randomBytes(8).toString("hex")}`;
  const deadline = new Date(Date.now() + Number(values["timeout-s"]) * 1000);
  try {
    console.log(await run(positionals[0], aggregateId, values["aggregate-type"], values["api-key"], deadline));
  } catch (error) {
    console.error("example:", error instanceof Error ? error.message : error);
    process.exit(1);
  }
}

void main();
