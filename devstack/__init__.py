"""Development stack: real Cassandra, Kafka and OpenSearch on loopback, without Docker.

The three servers come from Maven Central: their jars are resolved once into a cache outside
the work tree (`downloads`), their configuration is rendered from `templates/` into a state
directory, and each runs as a background process whose pid is recorded so that `down` stops
exactly what `up` started (`processes`). One module per service (`cassandra`, `kafka`,
`opensearch`) says how to configure, start and probe it; `stack` runs the commands and
`__main__` is the CLI, the only place that turns a `errors.StackError` into an exit status.

An endpoint variable (EVENTSTORE_CASSANDRA_HOSTS, EVENTSTORE_KAFKA_BOOTSTRAP,
EVENTSTORE_OPENSEARCH_URL) means "use that cluster": the service is then neither started nor
stopped here. EVENTSTORE_CACHE_DIR and EVENTSTORE_STACK_DIR move the downloads and the state.

Fault injection without stopping a shared service: `proxy.FaultProxy` is a TCP proxy a test
puts on a free loopback port in front of one service and then cuts, pauses and restores.
OpenSearch clients just take the proxy's URL. Kafka clients connect to whatever the broker
advertises after bootstrapping, so the broker has a FAULTY listener (127.0.0.1:19092) that
advertises 127.0.0.1:19094, where a test's proxy listens and forwards to 19092: a server
bootstrapped at 127.0.0.1:19094 reaches Kafka only through that proxy, while every other test
keeps 127.0.0.1:9092. The pytest fixtures `kafka_fault_proxy` and `opensearch_fault_proxy`
(tests/integration/conftest.py) do this; see docs/local-stack.md.
"""
