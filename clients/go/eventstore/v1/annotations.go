package eventstorev1

// The generated code imports googleapis' HTTP annotations once eventstore.proto carries
// google.api.http options (for the HTTP gateway). Importing them here too keeps go.mod
// requiring their module with or without those options, so that `make protos` never needs a
// `go get` (builds run with -mod=readonly).
import _ "google.golang.org/genproto/googleapis/api/annotations"
