"""How our code produces to Kafka: the shared producer settings and a produce that waits.

Used by the flow's sink, the rules CLI, the demo and the development producers,
so every producer places keys the same way (murmur2, as the Java client does)
and treats a full local queue the same way (serve delivery reports, retry).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Producer

#: Producer settings for throughput; ``FRAUD_KAFKA_*`` options and a caller's config override
#: them. No idempotence: on Tansu it costs 8x in throughput; acks=all still guards against loss.
PRODUCER_DEFAULTS: dict[str, str | int | bool] = {
    "linger.ms": 5,
    "batch.num.messages": 10_000,
    "batch.size": 1_000_000,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 200_000,
    "acks": "all",
    "enable.idempotence": False,
    "message.timeout.ms": 60_000,
    "log.connection.close": False,  # an embedded broker stopping is not news
    # The Java client's default: the scoring flow routes labels to the partition of
    # their card with the same function (state.partitioning.murmur2_partition).
    "partitioner": "murmur2_random",
}


def produce_waiting(
    producer: Producer,
    topic: str,
    value: bytes,
    key: bytes | None,
    on_delivery: Callable[[KafkaError | None, Any], None] | None = None,
) -> None:
    """Produce one record; while the local queue is full, serve delivery reports and retry.

    Never raises ``BufferError``; librdkafka's own errors (unknown topic, too large a
    record) propagate as ``KafkaException``.
    """
    while True:
        try:
            producer.produce(topic, value, key, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.05)
