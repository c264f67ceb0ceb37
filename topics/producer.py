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
    # Without idempotence, a retried request may land behind later ones (librdkafka keeps up
    # to 1,000,000 in flight): on Apache Kafka the first batches after a topic is created
    # failed with NOT_LEADER, were retried, and a partition held its records in three runs
    # out of production order; velocity features then counted them in that order (13,106 of
    # 20,177 scores differed from the event-time answer). One request in flight per broker
    # keeps each partition in production order; bulk production measured no slower on the
    # embedded broker (200,000 records, 243k-254k/s either way).
    "max.in.flight.requests.per.connection": 1,
    "message.timeout.ms": 60_000,
    "log.connection.close": False,  # an embedded broker stopping is not news
    # The Java client's default: the scoring flow routes labels to the partition of
    # their card with the same function (state.partitioning.murmur2_partition).
    "partitioner": "murmur2_random",
}

#: Overrides for a producer paced at a steady rate (the demo's gateway, ``just produce
#: --rate``): record batches of up to 50 ms. With 5 ms each partition gets batches of one or
#: two records at a few thousand a second, and the embedded broker's fetches slow as a topic
#: fills with such tiny batches (the demo's p99 grew 6x in 30 s; at 3,000/s the broker fell
#: behind until deliveries timed out after ~5 minutes); with 50 ms it stays flat (README
#: "Performance").
PACED_PRODUCER: dict[str, str | int | bool] = {"linger.ms": 50}


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
