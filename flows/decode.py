"""Bytewax operator: raw Kafka messages in, typed records (oks) and dead letters (errs) out."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

import bytewax.operators as op
import msgspec
from bytewax.connectors.kafka.operators import KafkaOpOut
from bytewax.dataflow import Stream, operator

from flows import metrics
from flows.kafka import RawRecord, SinkRecord
from topics.deadletter import dead_letter
from topics.validation import ContractDecoder, Rejection

T = TypeVar("T", bound=msgspec.Struct)

_encode = msgspec.json.Encoder().encode


class Sourced(NamedTuple, Generic[T]):
    """A decoded record and where it came from (partition and offset make replays idempotent)."""

    value: T
    partition: int
    offset: int
    ingest_ms: int
    """Kafka record timestamp: when the message reached the broker."""


def classify(
    msg: RawRecord, decoder: ContractDecoder[T], now_ms: int
) -> Sourced[T] | SinkRecord:
    """Decode one message into a sourced record, or the dead-letter message that replaces it.

    Time rules (e.g. "at most 24 h in the future") are judged against the message's
    Kafka timestamp, not the wall clock, so a replayed message gets the same answer.
    """
    partition, offset = msg.partition, msg.offset
    ingest_ms = msg.timestamp_ms if msg.timestamp_ms > 0 else now_ms
    result = decoder.decode(msg.value, ingest_ms)
    if isinstance(result, Rejection):
        metrics.DEAD_LETTERS.labels(error_class=result.error_class).inc()
        record = dead_letter(
            source_topic=msg.topic,
            partition=partition,
            offset=offset,
            key=msg.key,
            value=msg.value,
            rejection=result,
            now_ms=now_ms,
        )
        return SinkRecord(msg.key, _encode(record))
    return Sourced(result, partition, offset, ingest_ms)


@operator
def decode(
    step_id: str,
    up: Stream[RawRecord],
    decoder: ContractDecoder[T],
    clock: Callable[[], float] = time.time,
) -> KafkaOpOut[Sourced[T], SinkRecord]:
    """Split raw messages into decoded records and dead-letter messages; never raises."""

    def classify_batch(batch: list[RawRecord]) -> list[Sourced[T] | SinkRecord]:
        now_ms = int(clock() * 1000)
        return [classify(msg, decoder, now_ms) for msg in batch]

    classified = op.flat_map_batch("classify", up, classify_batch)
    branch = op.branch("split", classified, lambda item: isinstance(item, Sourced))
    return KafkaOpOut(branch.trues, branch.falses)  # type: ignore[arg-type]
