"""The public formats: protobuf messages <-> domain types, and the Kafka record of an event.

One place for what leaves the process, used alike by the gRPC servicer, the Kafka publisher and
reader, the indexer, the replayer and the client. Nothing here imports gRPC; the domain imports
nothing from here. No validation either: the domain does it.
"""
