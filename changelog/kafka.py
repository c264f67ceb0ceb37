"""The stores' changelog topics on Kafka: :class:`state.changelog.ChangeSink` over a broker.

One compacted topic per stage, ``cards-changelog`` and ``merchants-changelog``
(under ``FRAUD_TOPIC_PREFIX``), one partition per shard, made by the flow when
``FRAUD_CHANGELOG=on`` (their partition count is the shard count, not the
registry's). A record's key is the store's key (a card token, a merchant id, a
transaction id, an expiry index key), its value the stored bytes, or none for a
delete; records are compressed (lz4) and produced in order, one request in flight
per broker (:data:`topics.producer.PRODUCER_DEFAULTS`), so a partition keeps the
store's order. What the records mean and how a store is restored from them:
:mod:`state.changelog`.

Who may read these topics may read the stores: give them the ACLs of the state
volumes (only the flow's principal; :doc:`docs/kafka-acls.md`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from lifecycle import process as lifecycle
from state.changelog import COMPACTION_LAG_MS, Change
from topics.admin import create_topic
from topics.errors import BrokerError, ConfigError
from topics.producer import PRODUCER_DEFAULTS
from topics.settings import KafkaSettings

log = logging.getLogger(__name__)

#: The stages whose stores keep a changelog, and their topics' logical names.
CHANGELOGS = {"cards": "cards-changelog", "merchants": "merchants-changelog"}
#: Topic configs: compacted; deletes kept a week; nothing compacted in its first day.
CONFIG = {
    "cleanup.policy": "compact",
    "min.compaction.lag.ms": str(COMPACTION_LAG_MS),
    "delete.retention.ms": str(7 * 24 * 3600 * 1000),
    "segment.ms": str(24 * 3600 * 1000),
}
#: Records wait up to 200 ms to fill large batches (fewer, larger requests: less CPU in
#: the broker and librdkafka); each snapshot's flush sends what waits at once.
_LINGER = {"linger.ms": 200}
#: Reading a partition back: large fetches, nothing committed.
_READ: dict[str, str | int | bool] = {"enable.partition.eof": True, "enable.auto.commit": False,
         "group.id": "BYTEWAX_IGNORED", "fetch.max.bytes": 64 << 20, "fetch.wait.max.ms": 10,
         "max.partition.fetch.bytes": 16 << 20, "log_level": 4}


def ensure(settings: KafkaSettings, role: str, shards: int, timeout: float = 30.0) -> str:
    """Create the role's changelog topic (``shards`` partitions) if missing; its name.

    Raises :class:`ConfigError` when it exists with another partition count (the
    shard count changed: a changelog cannot be re-split in place).
    """
    topic = settings.topic(CHANGELOGS[role])
    have = create_topic(settings, topic, shards, CONFIG, timeout)
    if have != shards:
        setting = "FRAUD_CARD_SHARDS" if role == "cards" else "FRAUD_MERCHANT_SHARDS"
        raise ConfigError(
            f"changelog topic {topic!r} has {have} partitions, this run has {shards} {role} "
            f"shards: {setting} changed. Set it back; to change it, stop the flow, delete "
            f"the changelog topics, the state and the recovery directories, and rebuild "
            "from the topics (README: scaling)"
        )
    return topic


class KafkaChangelog:
    """The changelog of one stage's stores: produce without waiting, flush at snapshots."""

    def __init__(self, settings: KafkaSettings, role: str) -> None:
        self.topic = settings.topic(CHANGELOGS[role])
        self._settings = settings
        self._failures: list[str] = []
        # Only failures are reported (one Python callback per record cost 3.7% of the
        # flow's CPU): a failed record stops the flow at the next flush.
        self._producer = Producer({**settings.client_config(**PRODUCER_DEFAULTS),
                                   "log_level": 4, "delivery.report.only.error": True,
                                   "on_delivery": self._delivered, **_LINGER})

    def __repr__(self) -> str:
        return f"KafkaChangelog({self.topic!r})"

    def _delivered(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self._failures.append(str(err))

    def send(self, shard: int, changes: list[Change]) -> None:
        """Produce ``changes`` to partition ``shard``, in order, without waiting.

        No poll here: only failures make events (served by :meth:`flush`), and a poll
        per batch released and re-took the GIL (2.6% of the flow's samples).
        """
        produce = self._producer.produce
        topic = self.topic
        at = 0
        try:
            for at, (key, value) in enumerate(changes):  # noqa: B007 - read below
                produce(topic, value, key, shard)
            return
        except BufferError:  # the local queue is full: the rest, waiting as it drains
            pass
        for key, value in changes[at:]:
            while True:
                try:
                    produce(topic, value, key, shard)
                    break
                except BufferError:
                    self._producer.poll(0.05)

    def flush(self) -> None:
        """Wait for every acknowledgement; raise :class:`BrokerError` if any record failed.

        Waits in 1-s slices that notice a fatal stop (a lost broker), as the sinks do.
        """
        while self._producer.flush(1.0):
            request = lifecycle.current_request()
            if request is not None and request.error is not None:
                raise request.error
        if self._failures:
            first, count = self._failures[0], len(self._failures)
            self._failures = []
            raise BrokerError(
                f"{count} changelog records were not delivered to {self.topic!r} (first: "
                f"{first}); the flow stops so that recovery produces them again"
            )

    def read(self, shard: int) -> Iterator[Change]:
        """Every record of partition ``shard`` from the beginning, up to its end."""
        return read_partition(self._settings, self.topic, shard)

    def describe(self, shard: int) -> str:
        """``<topic> partition <shard>``."""
        return f"changelog {self.topic!r} partition {shard}"


def read_partition(settings: KafkaSettings, topic: str, partition: int) -> Iterator[Change]:
    """Every record (key, value) of ``topic`` partition ``partition``, from its start to its end.

    Raises :class:`BrokerError` when a fetch fails.
    """
    consumer = Consumer(settings.client_config(**_READ))
    try:
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                       timeout=10.0)
        except KafkaException as exc:
            raise BrokerError(f"cannot read {topic!r} partition {partition}: {exc}") from exc
        if high <= low:  # empty (or compacted to nothing): no fetch to wait for
            return
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        while True:
            messages = consumer.consume(10_000, timeout=0.05)
            for msg in messages:
                err = msg.error()
                if err is None:
                    yield msg.key() or b"", msg.value()
                elif err.code() == KafkaError._PARTITION_EOF:
                    return
                else:
                    raise BrokerError(f"cannot read {topic!r} partition {partition}: {err}")
            lifecycle.check_stop()
    finally:
        consumer.close()
