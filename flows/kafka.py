"""Bytewax Kafka sources and sinks built from ``KafkaSettings`` (brokers, pass-through options)."""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSource, KafkaSourceMessage
from bytewax.dataflow import Dataflow, Stream
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import OFFSET_BEGINNING, KafkaError, Producer

from topics.errors import BrokerError
from topics.produce import produce_waiting
from topics.settings import KafkaSettings

RawMessage = KafkaSourceMessage[bytes | None, bytes | None]


class SinkRecord(NamedTuple):
    """One record for a sink (a tuple: cheaper than Bytewax's frozen ``KafkaSinkMessage``)."""

    key: bytes | None
    value: bytes

#: Consumer defaults (``FRAUD_KAFKA_*`` overrides them). A short fetch wait keeps latency
#: low on brokers that hold a fetch for its whole wait (the embedded one does); the
#: statistics feed Bytewax's ``bytewax_kafka_consumer_lag`` gauge.
SOURCE_DEFAULTS = {"fetch.wait.max.ms": "10", "statistics.interval.ms": "5000"}


def _brokers_and_options(settings: KafkaSettings) -> tuple[list[str], dict[str, str]]:
    config = settings.client_config()
    brokers = str(config.pop("bootstrap.servers")).split(",")
    return brokers, {k: str(v) for k, v in config.items()}


def source(
    settings: KafkaSettings, logical: str, *, tail: bool = True, batch_size: int = 1000
) -> KafkaSource:
    """Read one registry topic from the beginning; offsets live in Bytewax's recovery store."""
    brokers, options = _brokers_and_options(settings)
    options = {**SOURCE_DEFAULTS, **options}
    return KafkaSource(
        brokers,
        [settings.topic(logical)],
        tail=tail,
        starting_offset=OFFSET_BEGINNING,
        add_config=options,
        batch_size=batch_size,
        raise_on_errors=True,
    )


def read(
    step_id: str, flow: Dataflow, settings: KafkaSettings, logical: str, **options: int | bool
) -> Stream[RawMessage]:
    """Input step over one registry topic.

    The source raises on consumer errors (the flow stops and resumes from its
    last snapshot), so only messages ever reach the stream.
    """
    messages = op.input(step_id, flow, source(settings, logical, **options))  # type: ignore[arg-type]
    return cast(Stream[RawMessage], messages)


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
