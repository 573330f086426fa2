"""The gRPC floor (#15): a grpc aio server on the store's own service whose Append stores
nothing and answers at once, as if the append had been committed at the expected version.

`benchmarks.append` drives it with the same client loops as the real server and counts its CPU
per call: what one unary call costs in Python's grpc aio on this machine before any work is
done. That floor plus the storage adapter's own CPU per append is the least the server's CPU
per append can be in one process, whatever the code around the storage call does.

    python -m benchmarks.null_server PORT
"""

from __future__ import annotations

import asyncio
import sys
import uuid

import grpc

from eventstore.v1 import eventstore_pb2 as pb
from eventstore.v1 import eventstore_pb2_grpc as pb_grpc


class NullEventStore(pb_grpc.EventStoreServicer):
    async def Append(
        self, request: pb.AppendRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.AppendResponse:
        head = request.expected_version.exact if request.expected_version.HasField("exact") else 0
        response = pb.AppendResponse(
            first_version=head + 1,
            last_version=head + len(request.events),
            event_ids=[e.event_id or str(uuid.uuid4()) for e in request.events],
        )
        response.committed_at.GetCurrentTime()
        return response


async def serve(port: int) -> None:
    server = grpc.aio.server()
    # Every other method is the generated base class's UNIMPLEMENTED (abstract to mypy).
    pb_grpc.add_EventStoreServicer_to_server(NullEventStore(), server)  # type: ignore[abstract]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
