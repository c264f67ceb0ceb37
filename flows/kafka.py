"""Kafka sources and sinks for Bytewax, built from ``KafkaSettings``.

The source is Bytewax's ``KafkaSource`` made lean: the same partitions
(``<index>-<topic>``), resume state (next offset) and lag gauge
(``bytewax_kafka_consumer_lag``), but records are plain tuples instead of
frozen dataclasses, which cost about 2 µs per message in the hot loop.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import bytewax.operators as op
from bytewax.connectors.kafka import BYTEWAX_CONSUMER_LAG_GAUGE
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    Producer,
    TopicPartition,
)

from flows import lifecycle
from topics.admin import partition_count
from topics.errors import BrokerError
from topics.produce import produce_waiting
from topics.settings import KafkaSettings


class RawRecord(NamedTuple):
    """One consumed record."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    """Kafka record timestamp (0: none)."""


class SinkRecord(NamedTuple):
    """One record for a sink (a tuple: cheaper than Bytewax's frozen ``KafkaSinkMessage``)."""

    key: bytes | None
    value: bytes


#: Consumer defaults (``FRAUD_KAFKA_*`` overrides them). A short fetch wait keeps latency
#: low on brokers that hold a fetch for its whole wait (the embedded one does); the
#: statistics feed the ``bytewax_kafka_consumer_lag`` gauge.
SOURCE_DEFAULTS = {
    "fetch.wait.max.ms": "10",
    "statistics.interval.ms": "5000",
    # a resume offset already deleted by retention restarts at the oldest record kept,
    # not at the end (librdkafka's default would skip everything still retained)
    "auto.offset.reset": "earliest",
}


#: Next offset to read per (topic, partition) in this process (the input watch compares them
#: with the partitions' ends: an end below it means the topic was re-created or truncated).
CONSUMED: dict[tuple[str, int], int] = {}


def consumed_offsets() -> dict[tuple[str, int], int]:
    """A copy of :data:`CONSUMED`."""
    return dict(CONSUMED)


class _SourcePartition(StatefulSourcePartition[RawRecord, int]):
    """One topic partition; its snapshot is the next offset to read."""

    def __init__(
        self, step_id: str, config: dict[str, Any], topic: str, partition: int, offset: int,
        batch_size: int,
    ) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._batch_size = batch_size
        self._eof = False
        self._lag = BYTEWAX_CONSUMER_LAG_GAUGE.labels(
            step_id=step_id, topic=topic, partition=partition
        )
        self._consumer = Consumer({**config, "stats_cb": self._on_stats})
        self._consumer.assign([TopicPartition(topic, partition, offset)])
        if offset >= 0:
            CONSUMED[(topic, partition)] = offset

    def _on_stats(self, stats: str) -> None:
        found = json.loads(stats)["topics"].get(self._topic, {}).get("partitions", {})
        end = found.get(str(self._partition), {}).get("ls_offset", -1)
        if self._offset > 0 and end >= 0:
            self._lag.set(end - self._offset)

    def next_batch(self) -> list[RawRecord]:
        lifecycle.check_stop()  # a requested stop ends the input: the dataflow drains
        if self._eof:
            raise StopIteration
        out: list[RawRecord] = []
        append = out.append
        topic, partition = self._topic, self._partition
        for msg in self._consumer.consume(self._batch_size, 0.001):
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._eof = True  # emit this batch, stop at the next call
                    break
                raise BrokerError(f"error consuming from {topic!r} partition {partition}: "
                                  f"{error}; the flow stops and resumes from its snapshot")
            kind, ts = msg.timestamp()
            append(RawRecord(msg.key(), msg.value(), topic, partition, msg.offset() or 0,
                             ts if kind != TIMESTAMP_NOT_AVAILABLE else 0))
        if out:
            self._offset = out[-1].offset + 1
            CONSUMED[(topic, partition)] = self._offset
        return out

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._consumer.close()


class LeanKafkaSource(FixedPartitionedSource[RawRecord, int]):
    """Every partition of one topic, from the beginning or the resumed offset."""

    def __init__(
        self, settings: KafkaSettings, topic: str, *, tail: bool, batch_size: int,
        config: dict[str, str] | None = None,
    ) -> None:
        self._settings, self._topic = settings, topic
        self._tail, self._batch_size = tail, batch_size
        self._config = config or {}

    def list_parts(self) -> list[str]:
        """Bytewax's partition names: ``<index>-<topic>``."""
        count = partition_count(self._settings, self._topic)
        return [f"{i}-{self._topic}" for i in range(count)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None
                   ) -> _SourcePartition:
        """A consumer assigned to one partition at the resumed (or first) offset."""
        index, topic = for_part.split("-", 1)
        config: dict[str, Any] = {
            **SOURCE_DEFAULTS,
            **self._config,
            "group.id": "BYTEWAX_IGNORED",  # offsets live in Bytewax's recovery store
            "enable.auto.commit": False,
            "enable.partition.eof": not self._tail,
            **self._settings.client_config(),
        }
        start = OFFSET_BEGINNING if resume_state is None else resume_state
        return _SourcePartition(step_id, config, topic, int(index), start, self._batch_size)


def source(
    settings: KafkaSettings, logical: str, *, tail: bool = True, batch_size: int = 1000,
    config: dict[str, str] | None = None,
) -> LeanKafkaSource:
    """Read one registry topic from the beginning; offsets live in Bytewax's recovery store.

    ``config`` overrides :data:`SOURCE_DEFAULTS` for this topic (``FRAUD_KAFKA_*``
    still wins). A consumer error stops the flow (it resumes from its last
    snapshot), so only records reach the stream.
    """
    return LeanKafkaSource(settings, settings.topic(logical), tail=tail, batch_size=batch_size,
                           config=config)


def read(
    step_id: str, flow: Dataflow, settings: KafkaSettings, logical: str,
    **options: int | bool | dict[str, str],
) -> Stream[RawRecord]:
    """Input step over one registry topic (``options``: see :func:`source`)."""
    return op.input(step_id, flow, source(settings, logical, **options))  # type: ignore[arg-type]


#: Producer defaults for the flow's outputs (``FRAUD_KAFKA_*`` overrides them).
SINK_DEFAULTS = {"linger.ms": "1", "compression.type": "lz4"}


class _CheckedPartition(StatelessSinkPartition[SinkRecord]):
    """Produce a batch, wait for its acknowledgements, and fail loudly if any was lost."""

    def __init__(self, producer: Producer, topic: str) -> None:
        self._producer = producer
        self._topic = topic
        self._failures: list[str] = []

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self._failures.append(str(err))

    def write_batch(self, items: list[SinkRecord]) -> None:
        for key, value in items:
            produce_waiting(self._producer, self._topic, value, key, self._on_delivery)
        # Acknowledged before the batch counts as written, as Bytewax's own sink does, so
        # an epoch is never committed ahead of its outputs (at-least-once).
        self._producer.flush()
        if self._failures:
            first, count = self._failures[0], len(self._failures)
            raise BrokerError(
                f"{count} records were not delivered to {self._topic!r} (first: {first}); "
                "the flow stops so that recovery produces them again"
            )

    def close(self) -> None:
        self._producer.flush()


class CheckedSink(DynamicSink[SinkRecord]):
    """Bytewax's ``KafkaSink``, except that an unacknowledged record stops the flow.

    Bytewax's sink ignores delivery reports, so a record that failed after its
    retries would vanish; here the flow stops and recovery produces it again.
    """

    def __init__(self, settings: KafkaSettings, logical: str) -> None:
        self._config = {**SINK_DEFAULTS, **settings.client_config()}
        self._topic = settings.topic(logical)

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> _CheckedPartition:
        """One producer per worker."""
        return _CheckedPartition(Producer(self._config), self._topic)


def sink(settings: KafkaSettings, logical: str) -> CheckedSink:
    """The sink for one registry topic."""
    return CheckedSink(settings, logical)
