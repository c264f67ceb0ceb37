"""Bytewax operator: raw Kafka messages in, typed records (oks) and dead letters (errs) out.

Time rules are judged against the record's Kafka timestamp, never the wall
clock, so a replayed message gets the same answer and a re-emitted dead letter
is byte-identical. An event time further ahead of its record's timestamp than
the allowed clock skew (:class:`SkewRule`) never moves a window clock: it is
clamped to the record timestamp (the default: the transaction is still scored,
and its verdict says so) or dead-lettered, by configuration, and counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

import bytewax.operators as op
import msgspec
from bytewax.connectors.kafka.operators import KafkaOpOut
from bytewax.dataflow import Stream, operator

from flows import metrics
from flows.kafka import RawRecord, SinkRecord
from state.partitioning import murmur2_partition
from topics.contracts import Label, Transaction
from topics.deadletter import dead_letter
from topics.validation import ContractDecoder, Rejection

T = TypeVar("T", bound=msgspec.Struct)

_encode = msgspec.json.Encoder().encode


class Sourced(NamedTuple, Generic[T]):
    """A decoded record and where it came from."""

    value: T
    partition: int
    offset: int
    ingest_ms: int
    """Kafka record timestamp: when the message reached the broker."""
    event_ms: int
    """The time the windows use: the record's event (or label) time, clamped to
    ``ingest_ms`` when it was further ahead than the allowed skew."""
    fetched: float = 0.0
    """When the source handed the record on (epoch seconds; per-stage latency)."""

    @property
    def clamped(self) -> bool:
        """Whether the event time was clamped (see :class:`SkewRule`)."""
        return self.event_ms != _time_of(self.value)


class DeadLetterRecord(NamedTuple):
    """A record for the dead-letter topic (a tuple like :class:`SinkRecord`, told apart by type)."""

    key: bytes | None
    value: bytes


@dataclass(frozen=True)
class SkewRule:
    """How far an event time may run ahead of its record's Kafka timestamp, and what then.

    ``max_ms``: the allowed clock skew between the producer's clock and the
    broker's. ``policy``: ``clamp`` uses the record timestamp instead (the record
    cannot have happened after it reached the broker, up to that skew), or
    ``dead-letter`` refuses the record.
    """

    max_ms: int = 300_000
    policy: str = "clamp"

    def apply(self, time_ms: int, record_ms: int) -> int | None:
        """The time to use, or None to refuse (dead-letter policy)."""
        if time_ms - record_ms <= self.max_ms:
            return time_ms
        return record_ms if self.policy == "clamp" else None


@dataclass(frozen=True)
class KeyRule:
    r"""Where a transaction's record belongs: its card's partition under murmur2.

    A record elsewhere (produced without a key, with another key or another
    partitioner) is ``route``\ d to its card's state by the card stage, or refused
    (``refuse``: dead-lettered with a reason that says how to produce it). Either
    way it is counted; a card's state is never silently split.
    """

    partitions: int
    policy: str = "route"

    def check(self, txn: Transaction, msg: RawRecord) -> Rejection | None:
        """None when the record may go on; a rejection when it is refused."""
        expected = murmur2_partition(txn.card_id, self.partitions)
        if expected == msg.partition:
            return None
        metrics.MISKEYED.labels(action=self.policy).inc()
        if self.policy == "route":
            return None
        return Rejection(
            "mis_keyed",
            f"record on partition {msg.partition}, but card {txn.card_id[:40]!r} belongs to "
            f"partition {expected}: produce transactions with key = card_id and the murmur2 "
            "partitioner (Java default; librdkafka partitioner=murmur2_random)",
        )


def _time_of(value: object) -> int:
    if isinstance(value, Transaction):
        return value.event_time
    if isinstance(value, Label):
        return value.label_time
    raise TypeError(f"no event time on {type(value).__name__}")


def classify(
    msg: RawRecord, decoder: ContractDecoder[T], now_ms: int, skew: SkewRule = SkewRule(),
    keys: KeyRule | None = None,
) -> Sourced[T] | DeadLetterRecord:
    """Decode one message into a sourced record, or the dead-letter record that replaces it."""
    partition, offset = msg.partition, msg.offset
    ingest_ms = msg.timestamp_ms if msg.timestamp_ms > 0 else now_ms
    result = decoder.decode(msg.value, ingest_ms)
    if keys is not None and isinstance(result, Transaction):
        refused = keys.check(result, msg)
        if refused is not None:
            expected = murmur2_partition(result.card_id, keys.partitions)
            return reject(msg, refused, expected_partition=expected)
    if not isinstance(result, Rejection):
        t = _time_of(result)
        used = skew.apply(t, ingest_ms)
        if used is not None:
            if used != t:
                metrics.CLAMPED.labels(topic=msg.topic).inc()
            return Sourced(result, partition, offset, ingest_ms, used, msg.fetched)
        result = Rejection(
            "future_event_time",
            f"{'event_time' if isinstance(result, Transaction) else 'label_time'}: "
            f"{(t - ingest_ms) / 60_000:.1f} min ahead of the record's Kafka timestamp, "
            f"over the allowed clock skew of {skew.max_ms / 60_000:g} min "
            "(FRAUD_MAX_SKEW_SECONDS); stamp times in UTC",
        )
    return reject(msg, result)


def reject(msg: RawRecord, rejection: Rejection, **details: int) -> DeadLetterRecord:
    """The dead-letter record of ``msg`` (bounded; its time is the record's timestamp)."""
    metrics.DEAD_LETTERS.labels(error_class=rejection.error_class).inc()
    record = dead_letter(
        source_topic=msg.topic, partition=msg.partition, offset=msg.offset, key=msg.key,
        value=msg.value, rejection=rejection, record_time_ms=max(msg.timestamp_ms, 0),
        **details,
    )
    return DeadLetterRecord(msg.key, _encode(record))


@operator
def decode(
    step_id: str,
    up: Stream[RawRecord],
    decoder: ContractDecoder[T],
    skew: SkewRule = SkewRule(),
    keys: KeyRule | None = None,
    clock: Callable[[], float] | None = None,
) -> KafkaOpOut[Sourced[T], SinkRecord]:
    """Split raw messages into decoded records and dead-letter records; never raises.

    ``clock`` stands in for a missing record timestamp (records always carry one on
    Kafka 0.10+; tests may pass their own).
    """
    import time

    now = clock or time.time

    def classify_batch(batch: list[RawRecord]) -> list[Sourced[T] | DeadLetterRecord]:
        now_ms = int(now() * 1000)
        return [classify(msg, decoder, now_ms, skew, keys) for msg in batch]

    classified = op.flat_map_batch("classify", up, classify_batch)
    branch = op.branch("split", classified, lambda item: isinstance(item, Sourced))
    return KafkaOpOut(branch.trues, branch.falses)  # type: ignore[arg-type]
