"""Bytewax Kafka sources and sinks built from ``KafkaSettings`` (brokers, pass-through options)."""

from __future__ import annotations

from bytewax.connectors.kafka import KafkaSink, KafkaSource
from confluent_kafka import OFFSET_BEGINNING

from topics.settings import KafkaSettings


def _brokers_and_options(settings: KafkaSettings) -> tuple[list[str], dict[str, str]]:
    config = settings.client_config()
    brokers = str(config.pop("bootstrap.servers")).split(",")
    return brokers, {k: str(v) for k, v in config.items()}


def source(
    settings: KafkaSettings, logical: str, *, tail: bool = True, batch_size: int = 1000
) -> KafkaSource:
    """Read one registry topic from the beginning; offsets live in Bytewax's recovery store."""
    brokers, options = _brokers_and_options(settings)
    return KafkaSource(
        brokers,
        [settings.topic(logical)],
        tail=tail,
        starting_offset=OFFSET_BEGINNING,
        add_config=options,
        batch_size=batch_size,
        raise_on_errors=True,
    )


def sink(settings: KafkaSettings, logical: str, **producer_config: str) -> KafkaSink:
    """Write to one registry topic (at-least-once: a resumed epoch is produced again)."""
    brokers, options = _brokers_and_options(settings)
    options.update({"linger.ms": "5", "compression.type": "lz4", **producer_config})
    return KafkaSink(brokers, settings.topic(logical), add_config=options)
