"""Bytewax Kafka sources and sinks built from ``KafkaSettings`` (brokers, pass-through options)."""

from __future__ import annotations

from typing import cast

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSink, KafkaSource, KafkaSourceMessage
from bytewax.dataflow import Dataflow, Stream
from confluent_kafka import OFFSET_BEGINNING

from topics.settings import KafkaSettings

RawMessage = KafkaSourceMessage[bytes | None, bytes | None]

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


def sink(settings: KafkaSettings, logical: str, **producer_config: str) -> KafkaSink:
    """Write to one registry topic (at-least-once: a resumed epoch is produced again)."""
    brokers, options = _brokers_and_options(settings)
    options.update({"linger.ms": "5", "compression.type": "lz4", **producer_config})
    return KafkaSink(brokers, settings.topic(logical), add_config=options)
