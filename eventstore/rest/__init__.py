"""The REST/JSON face: routes, request and response transcoding, and the OpenAPI document, all
built from the google.api.http options of protos/eventstore/v1/eventstore.proto. It forwards
every call to the server's own gRPC service (docs/architecture.md, "The REST/JSON face")."""
