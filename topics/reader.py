"""Read a topic to its end, or follow it, by partition assignment (no consumer group).

The one way our code reads a topic outside the flow: the tail and rules CLIs, history
export, the model-governance commands, the demo and the tests. Consumers ``assign()``
every partition and commit nothing, so they never join a group (slow on the embedded
broker) and never disturb other readers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from topics.errors import BrokerError
from topics.settings import KafkaSettings

#: Idle seconds after which a read that does not ``follow`` gives up.
DEFAULT_IDLE_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed Kafka record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None


def iter_topic(
    settings: KafkaSettings,
    topic: str,
    *,
    from_beginning: bool = True,
    follow: bool = False,
    limit: int | None = None,
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
) -> Iterator[Record]:
    """Yield records of every partition of ``topic`` (a real name).

    Stops after ``limit`` records, after ``idle_timeout`` seconds without a record
    (None: never), or, unless ``follow``, once every partition has been read to its end.
    """
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition

    options: dict[str, str | int | bool] = {
        # Required by librdkafka, never joined: we assign() and commit nothing.
        "group.id": f"fraudstream-tail-{os.getpid()}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": not follow,
        # An empty fetch waits this long on the broker; short, so an idle partition's
        # end is seen quickly.
        "fetch.wait.max.ms": 500 if follow else 50,
        "log.connection.close": False,
    }
    consumer = Consumer({**settings.client_config(**options)})
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise BrokerError(
                f"topic {topic!r} does not exist on {settings.bootstrap_servers}; "
                "list topics with `just topics --list` (python -m devkit.topics)"
            )
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        partitions = sorted(meta.partitions)
        consumer.assign([TopicPartition(topic, p, start) for p in partitions])
        pending_eof = set(partitions)
        seen = 0
        last_activity = time.monotonic()
        while limit is None or seen < limit:
            batch = consumer.consume(
                num_messages=500 if limit is None else min(500, limit - seen), timeout=0.2
            )
            if not batch:
                if idle_timeout is not None and time.monotonic() - last_activity > idle_timeout:
                    return
                continue
            last_activity = time.monotonic()
            for msg in batch:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending_eof.discard(msg.partition())
                        continue
                    raise BrokerError(f"reading {topic!r}: {err.str()}")
                partition, offset = msg.partition(), msg.offset()
                assert partition is not None and offset is not None  # set on every record
                pending_eof.add(partition)
                kind, ts = msg.timestamp()
                yield Record(
                    topic, partition, offset, msg.key(), msg.value(), ts if kind != 0 else None
                )
                seen += 1
            if not follow and not pending_eof:
                return
    finally:
        consumer.close()


def read_topic(
    settings: KafkaSettings,
    topic: str,
    limit: int | None = None,
    timeout: float = DEFAULT_IDLE_TIMEOUT,
    *,
    from_beginning: bool = True,
) -> list[Record]:
    """Every record of ``topic`` up to its current end (or ``limit``); ``timeout`` is idle time."""
    return list(
        iter_topic(
            settings, topic, from_beginning=from_beginning, limit=limit, idle_timeout=timeout
        )
    )
