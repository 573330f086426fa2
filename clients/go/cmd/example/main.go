// Command example uses the event store from Go through the generated client
// (github.com/example/eventstore/clients/go/eventstore/v1): it appends to a fresh aggregate,
// reads it back, provokes a version conflict and reads its details, and subscribes to the
// aggregate until caught up. It exits 1 with a message on the first thing that is not as
// expected; make test runs it against a real server (tests/integration/test_other_languages.py).
//
//	example [-api-key KEY] [-aggregate ID] [-aggregate-type TYPE] ADDRESS
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	eventstorev1 "github.com/example/eventstore/clients/go/eventstore/v1"
)

func main() {
	apiKey := flag.String("api-key", os.Getenv("EVENTSTORE_API_KEY"), "sent as `authorization: Bearer KEY` (default $EVENTSTORE_API_KEY)")
	aggregateID := flag.String("aggregate", "", "the aggregate to append to; it must have no events (default: a new random id)")
	aggregateType := flag.String("aggregate-type", "GoExample", "its type (one the API key may append, read and subscribe to)")
	timeout := flag.Duration("timeout", 30*time.Second, "for the whole run")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [flags] ADDRESS (host:port, plaintext)\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	if *aggregateID == "" {
		*aggregateID = "go-example-" + randomHex(8)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if *apiKey != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+*apiKey)
	}
	if err := run(ctx, flag.Arg(0), *aggregateID, *aggregateType); err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, address, aggregateID, aggregateType string) error {
	conn, err := grpc.NewClient(address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", address, err)
	}
	defer conn.Close()
	client := eventstorev1.NewEventStoreClient(conn)

	// 1. Append two events to an aggregate that must not exist yet. The event ids are ours, so
	// that a retry of the same request (after UNAVAILABLE, say) cannot append twice.
	events := []*eventstorev1.EventData{
		{EventId: newUUID(), EventType: "ItemAdded", Data: []byte(`{"item":"apple","quantity":1}`),
			Metadata: map[string]string{"client": "go"}},
		{EventId: newUUID(), EventType: "ItemAdded", Data: []byte(`{"item":"pear","quantity":2}`),
			Metadata: map[string]string{"client": "go"}},
	}
	appended, err := client.Append(ctx, &eventstorev1.AppendRequest{
		AggregateId:     aggregateID,
		AggregateType:   aggregateType,
		ExpectedVersion: &eventstorev1.ExpectedVersion{Expectation: &eventstorev1.ExpectedVersion_NoStream{NoStream: &emptypb.Empty{}}},
		Events:          events,
	})
	if err != nil {
		return fmt.Errorf("append: %w", err)
	}
	if appended.FirstVersion != 1 || appended.LastVersion != 2 || len(appended.EventIds) != 2 {
		return fmt.Errorf("append: want versions 1..2 and 2 ids, got %d..%d and %d ids",
			appended.FirstVersion, appended.LastVersion, len(appended.EventIds))
	}

	// 2. Read the aggregate back: a stream of pages, in version order.
	stream, err := client.ReadAggregate(ctx, &eventstorev1.ReadAggregateRequest{AggregateId: aggregateID})
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	var read []*eventstorev1.Event
	for {
		page, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		read = append(read, page.Events...)
	}
	if err := sameEvents("read", read, events, aggregateType); err != nil {
		return err
	}

	// 3. Append at a stale version: FAILED_PRECONDITION, with the conflict in the status
	// details (never parse the message text).
	_, err = client.Append(ctx, &eventstorev1.AppendRequest{
		AggregateId:     aggregateID,
		AggregateType:   aggregateType,
		ExpectedVersion: &eventstorev1.ExpectedVersion{Expectation: &eventstorev1.ExpectedVersion_Exact{Exact: 1}},
		Events:          []*eventstorev1.EventData{{EventId: newUUID(), EventType: "ItemRemoved", Data: []byte(`{"item":"apple"}`)}},
	})
	conflict, reason, err := versionConflict(err)
	if err != nil {
		return fmt.Errorf("stale append: %w", err)
	}
	if reason != "WRONG_EXPECTED_VERSION" || conflict.AggregateId != aggregateID ||
		conflict.ActualVersion != 2 || conflict.GetExpected().GetExact() != 1 {
		return fmt.Errorf("stale append: want WRONG_EXPECTED_VERSION for %s, expected 1, actual 2; got %s for %s, expected %v, actual %d",
			aggregateID, reason, conflict.AggregateId, conflict.GetExpected(), conflict.ActualVersion)
	}

	// 4. Subscribe to the aggregate from the beginning: its history, then the caught_up
	// marker (then live events, which we do not wait for).
	subCtx, stop := context.WithCancel(ctx)
	defer stop()
	sub, err := client.Subscribe(subCtx, &eventstorev1.SubscribeRequest{
		AggregateId: aggregateID,
		Start:       &eventstorev1.SubscribeRequest_FromBeginning{FromBeginning: &emptypb.Empty{}},
	})
	if err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	var history []*eventstorev1.Event
	var checkpoint string
	for caughtUp := false; !caughtUp; {
		message, err := sub.Recv()
		if err != nil {
			return fmt.Errorf("subscribe: before caught up: %w", err)
		}
		checkpoint = message.Checkpoint
		switch m := message.Message.(type) {
		case *eventstorev1.SubscribeResponse_Event:
			history = append(history, m.Event)
		case *eventstorev1.SubscribeResponse_CaughtUp:
			caughtUp = true
		case *eventstorev1.SubscribeResponse_Heartbeat:
		}
	}
	stop()
	if err := sameEvents("subscribe", history, events, aggregateType); err != nil {
		return err
	}
	if checkpoint == "" {
		return errors.New("subscribe: the caught_up marker has no checkpoint")
	}

	fmt.Printf("go example: appended versions %d..%d to %s, read %d events back, stale append refused (%s, actual version %d), subscription caught up after %d events\n",
		appended.FirstVersion, appended.LastVersion, aggregateID, len(read), reason, conflict.ActualVersion, len(history))
	return nil
}

// versionConflict returns the details of a refused append: our WrongExpectedVersion and the
// ErrorInfo's reason, both from the google.rpc.Status the server sends in the
// grpc-status-details-bin trailer (status.FromError decodes it).
func versionConflict(err error) (*eventstorev1.WrongExpectedVersion, string, error) {
	if err == nil {
		return nil, "", errors.New("want FAILED_PRECONDITION, the append succeeded")
	}
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.FailedPrecondition {
		return nil, "", fmt.Errorf("want FAILED_PRECONDITION, got %w", err)
	}
	var conflict *eventstorev1.WrongExpectedVersion
	var reason string
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *eventstorev1.WrongExpectedVersion:
			conflict = d
		case *errdetails.ErrorInfo:
			if d.Domain == "eventstore.v1" {
				reason = d.Reason
			}
		}
	}
	if conflict == nil {
		return nil, "", fmt.Errorf("no eventstore.v1.WrongExpectedVersion in the details of %v", st.Proto())
	}
	return conflict, reason, nil
}

func sameEvents(what string, got []*eventstorev1.Event, want []*eventstorev1.EventData, aggregateType string) error {
	if len(got) != len(want) {
		return fmt.Errorf("%s: want %d events, got %d", what, len(want), len(got))
	}
	for i, event := range got {
		sent := want[i]
		if event.Version != int64(i+1) || event.EventId != sent.EventId || event.EventType != sent.EventType ||
			!bytes.Equal(event.Data, sent.Data) || event.AggregateType != aggregateType ||
			event.Metadata["client"] != sent.Metadata["client"] {
			return fmt.Errorf("%s: event %d: want version %d, id %s, type %s, data %s; got version %d, id %s, type %s, data %s",
				what, i, i+1, sent.EventId, sent.EventType, sent.Data, event.Version, event.EventId, event.EventType, event.Data)
		}
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// newUUID is a random (version 4) UUID in canonical form, as EventData.event_id requires.
func newUUID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
