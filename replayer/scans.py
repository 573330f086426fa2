"""Whole-copy scans for reconciliation: every record of a Kafka topic, every document of an
aggregate type in the search index. Blocking (run them in a thread); driver errors become
StorageUnavailable here and nowhere else.

Each scan hands every copy it reads to a visitor as (aggregate_id, version, event_id as 16
bytes, recorded_at in microseconds since the epoch, partition), in the copy's own order.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from google.protobuf.message import DecodeError
from opensearchpy.exceptions import ConnectionError as OpenSearchConnectionError
from opensearchpy.exceptions import TransportError

from eventstore.config import KafkaSettings, OpenSearchSettings
from eventstore.domain.errors import StorageUnavailable
from eventstore.search.setup import make_client
from eventstore.v1 import eventstore_pb2 as pb

Visit = Callable[[str, int, bytes, int, int], None]

#: Give up on a topic when no record arrives for this long while some are still to be read.
STALL_S = 30.0
BATCH = 5000
#: OpenSearch's default index.max_terms_count
MAX_TERMS = 65_536


def micros(value: datetime) -> int:
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    delta = aware - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class CopyScan(ABC):
    """One copy of the events of an aggregate type, read whole."""

    #: what is read (topic or index alias), for the report
    name: str
    #: copies skipped because they could not be decoded
    undecodable: int = 0
    #: False when what is read does not exist (a topic never created)
    exists: bool = True

    def open(self) -> None:  # noqa: B027 - optional hook
        """Fix where the scan ends (called before the store is read)."""

    @abstractmethod
    def scan(self, visit: Visit) -> int:
        """Hand every copy to `visit`; return how many were read."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class TopicScan(CopyScan):
    """A topic from its beginning to the end offsets it had at open(), with a plain consumer:
    partitions assigned by hand, nothing committed, no group joined."""

    def __init__(
        self, settings: KafkaSettings, topic: str, keys: Collection[str] | None = None
    ) -> None:
        self.name = topic
        self._settings = settings
        #: only records with these keys (aggregate ids) are decoded
        self._keys = frozenset(k.encode() for k in keys) if keys is not None else None
        self._consumer: Consumer | None = None
        self._bounds: dict[int, tuple[int, int]] = {}
        self.exists = True
        # close() may come from another thread while scan() runs (a cancelled run): it stops
        # the loop and waits for it before closing the consumer under it.
        self._stop = threading.Event()
        self._busy = threading.Lock()

    def open(self) -> None:
        try:
            self._consumer = Consumer(
                {
                    **self._settings.client_config(),
                    # Required by the client, never used: no subscribe(), no commit.
                    "group.id": f"eventstore-verify-{uuid.uuid4().hex}",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "enable.partition.eof": True,
                    "allow.auto.create.topics": False,
                    # Connection failures surface as errors of the calls; no log lines for
                    # each retry on the operator's terminal.
                    "log_level": 2,
                }
            )
            metadata = self._consumer.list_topics(self.name, timeout=10).topics.get(self.name)
            error = metadata.error if metadata is not None else None
            if error is not None and error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise StorageUnavailable(f"Kafka: topic {self.name}: {error}")
            if metadata is None or error is not None or not metadata.partitions:
                self.exists = False
                return
            for partition in sorted(metadata.partitions):
                self._bounds[partition] = self._watermarks(partition)
        except KafkaException as exc:
            raise StorageUnavailable(f"Kafka: {exc.args[0]}") from exc

    def _watermarks(self, partition: int) -> tuple[int, int]:
        assert self._consumer is not None
        for attempt in range(20):
            try:
                low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self.name, partition), timeout=10
                )
                return int(low), int(high)
            except KafkaException as exc:
                error = exc.args[0]
                # Leadership moves for a moment after a broker restarts; a loaded broker may
                # not answer in time: ask again.
                passing = error.retriable() or error.code() in (
                    KafkaError._TIMED_OUT,
                    KafkaError.NOT_LEADER_FOR_PARTITION,
                    KafkaError.LEADER_NOT_AVAILABLE,
                )
                if attempt == 19 or not passing:
                    raise
                time.sleep(0.25)
        raise AssertionError("unreachable")

    def scan(self, visit: Visit) -> int:
        with self._busy:
            return self._scan(visit)

    def _scan(self, visit: Visit) -> int:
        if self._consumer is None or not self.exists:
            return 0
        consumer = self._consumer
        remaining = {p for p, (low, high) in self._bounds.items() if high > low}
        if not remaining:
            return 0
        read = 0
        try:
            consumer.assign(
                [TopicPartition(self.name, p, self._bounds[p][0]) for p in sorted(remaining)]
            )
            last_progress = time.monotonic()
            while remaining and not self._stop.is_set():
                # consume() waits out its timeout unless the batch fills: keep it short.
                messages = consumer.consume(num_messages=BATCH, timeout=0.1)
                if not messages:
                    if time.monotonic() - last_progress > STALL_S:
                        raise StorageUnavailable(
                            f"Kafka: no record of {self.name} for {STALL_S:.0f} s while "
                            f"partitions {sorted(remaining)} were not read to their end"
                        )
                    continue
                last_progress = time.monotonic()
                for message in messages:
                    error = message.error()
                    partition = message.partition()
                    if partition is None:
                        continue
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            remaining.discard(partition)
                        elif error.fatal():
                            raise StorageUnavailable(f"Kafka: {error}")
                        continue  # transient: the client retries by itself
                    offset = message.offset()
                    end = self._bounds[partition][1]
                    if partition not in remaining or offset is None or offset >= end:
                        continue
                    if offset + 1 >= end:
                        remaining.discard(partition)
                    read += 1
                    key = message.key()
                    if self._keys is not None and key is not None and key not in self._keys:
                        continue
                    self._decode(message.value(), partition, visit)
        except KafkaException as exc:
            raise StorageUnavailable(f"Kafka: {exc.args[0]}") from exc
        return read

    def _decode(self, value: bytes | None, partition: int, visit: Visit) -> None:
        event = pb.Event()
        try:
            event.ParseFromString(value or b"")
            event_id = uuid.UUID(event.event_id).bytes
        except (DecodeError, ValueError):
            self.undecodable += 1
            return
        if not event.aggregate_id or event.version < 1:
            self.undecodable += 1
            return
        if self._keys is not None and event.aggregate_id.encode() not in self._keys:
            return
        stamp = event.recorded_at
        visit(
            event.aggregate_id,
            event.version,
            event_id,
            stamp.seconds * 1_000_000 + stamp.nanos // 1000,
            partition,
        )

    def close(self) -> None:
        self._stop.set()
        with self._busy:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None


class IndexScan(CopyScan):
    """The documents of one aggregate type (optionally some aggregates, a time range) through
    the alias, with a scroll sorted by (aggregate_id, version)."""

    def __init__(
        self,
        settings: OpenSearchSettings,
        aggregate_type: str,
        aggregate_ids: Collection[str] | None,
        start: datetime | None,
        end: datetime | None,
        page_size: int = 5000,
    ) -> None:
        self.name = settings.alias
        self._settings = settings
        self._filters: list[dict[str, Any]] = [{"term": {"aggregate_type": aggregate_type}}]
        # Beyond what a terms query takes, the whole type is read (the visitor skips the rest).
        if aggregate_ids is not None and len(aggregate_ids) <= MAX_TERMS:
            self._filters.append({"terms": {"aggregate_id": sorted(aggregate_ids)}})
        if start is not None or end is not None:
            # Documents keep milliseconds: t >= start and t < end, exactly, in whole ones.
            bounds: dict[str, Any] = {"format": "epoch_millis"}
            if start is not None:
                bounds["gte"] = -(-micros(start) // 1000)
            if end is not None:
                bounds["lt"] = -(-micros(end) // 1000)
            self._filters.append({"range": {"recorded_at": bounds}})
        self._page_size = page_size

    def scan(self, visit: Visit) -> int:
        client = make_client(self._settings)
        scroll_id: str | None = None
        read = 0
        try:
            response = client.search(
                index=self.name,
                body={
                    "query": {"bool": {"filter": self._filters}},
                    "sort": [{"aggregate_id": "asc"}, {"version": "asc"}],
                    "_source": ["aggregate_id", "version", "event_id", "recorded_at"],
                    "size": self._page_size,
                },
                scroll="2m",
                ignore_unavailable=True,
                allow_no_indices=True,
            )
            while True:
                scroll_id = response.get("_scroll_id") or scroll_id
                hits = response["hits"]["hits"]
                for hit in hits:
                    read += 1
                    self._visit(hit.get("_source") or {}, visit)
                if len(hits) < self._page_size or scroll_id is None:
                    return read
                response = client.scroll(scroll_id=scroll_id, scroll="2m")
        except (OpenSearchConnectionError, TransportError) as exc:
            raise StorageUnavailable(f"OpenSearch: {exc}") from exc
        finally:
            if scroll_id is not None:
                # Failing that, the context expires by itself.
                with contextlib.suppress(OpenSearchConnectionError, TransportError):
                    client.clear_scroll(scroll_id=scroll_id)
            client.close()

    def _visit(self, source: dict[str, Any], visit: Visit) -> None:
        try:
            aggregate_id = str(source["aggregate_id"])
            version = int(source["version"])
            event_id = uuid.UUID(str(source["event_id"])).bytes
            recorded_at = micros(datetime.fromisoformat(str(source["recorded_at"])))
        except (KeyError, TypeError, ValueError):
            self.undecodable += 1
            return
        visit(aggregate_id, version, event_id, recorded_at, 0)
