"""The gRPC layer: servicers, wire conversion and the one error-to-status mapping."""
