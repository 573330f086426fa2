# Server, indexer and replay CLI in one image (the command picks the process):
#   docker build -t eventstore .
#   docker run eventstore eventstore-server | eventstore-indexer | eventstore-migrate | eventstore-replay
# One server process by default: give the container N cores and run
#   docker run -e EVENTSTORE_PROCESSES=N eventstore
# to serve on all of them (README, Server settings). The chart sets it from server.processes.
# Multi-stage: wheels are built with the toolchain, the final image has none of it.

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY eventstore ./eventstore
COPY indexer ./indexer
COPY replayer ./replayer
# Only the runtime dependencies, at the versions CI tested (constraints.txt).
RUN python -m venv /opt/eventstore \
 && /opt/eventstore/bin/pip install --upgrade "pip>=24" \
 && /opt/eventstore/bin/pip install -c constraints.txt .

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 eventstore \
 && useradd --system --uid 10001 --gid eventstore --no-create-home --shell /usr/sbin/nologin eventstore
COPY --from=build /opt/eventstore /opt/eventstore
ENV PATH=/opt/eventstore/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EVENTSTORE_LISTEN=0.0.0.0:50051 \
    EVENTSTORE_METRICS_HOST=0.0.0.0 \
    EVENTSTORE_METRICS_PORT=9464 \
    EVENTSTORE_PROCESSES=1
USER 10001:10001
EXPOSE 50051 9464
CMD ["eventstore-server"]
