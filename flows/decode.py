"""Decode steps: one raw poll in, decoded columns addressed to their shards (oks) and dead letters.

Time rules are judged against the record's Kafka timestamp, never the wall
clock, so a replayed message gets the same answer and a re-emitted dead letter
is byte-identical. An event time further ahead of its record's timestamp than
the allowed clock skew (:class:`SkewRule`) never moves a window clock: it is
clamped to the record timestamp (the default: the transaction is still scored,
and its verdict says so) or dead-lettered, by configuration, and counted.

Each poll of a partition also says where that partition stands in event time
(its progress, or that it is idle): every shard downstream hears it, so the
merchant stage knows what has arrived (:mod:`state.reorder`). Shards that get no
records from a poll get that news at most every :data:`MARKER_MS` of event time.

Card data stops here: the decoder tokenises a PAN sent as ``card_id`` (or refuses
it without a key, :mod:`topics.pan`), every dead letter is masked, its Kafka key
too (:func:`topics.deadletter.record_key`), and a tokenised card is judged at
home on the partition of its key as produced (:class:`TransactionRouter`).

With tracing on (:mod:`tracing`), the decode step picks the batch's traced rows
(:meth:`tracing.spans.Tracing.carry`) and hands them on in ``Decoded.traces``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

import bytewax.operators as op
import msgspec
import numpy as np
from bytewax.connectors.kafka.operators import KafkaOpOut
from bytewax.dataflow import Stream, operator

from flows import alignment, metrics
from flows.items import CardWork, Decoded, MerchantWork
from flows.kafka import RawBatch, RawRecord, SinkRecord
from flows.routing import shard_key
from state.kernels.windows import NO_TIME
from state.partitioning import murmur2, murmur2_partitions
from topics.contracts import Label, Transaction
from topics.currency import RateTable, metric_currency, unrated_currency
from topics.deadletter import dead_letter, record_key
from topics.pan import TOKEN_PREFIX, CardGuard
from topics.validation import ContractDecoder, Rejection, TransactionDecoder
from tracing.carry import Header
from tracing.spans import Tracing

T = TypeVar("T", Transaction, Label)

_encode = msgspec.json.Encoder().encode
#: Event time (ms) a partition must advance before shards without its records hear of it.
MARKER_MS = 10_000


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

    def refusal(self, partition: int, expected: int | None) -> Rejection:
        """The dead-letter reason of a refused mis-keyed record (it names no card id).

        ``expected`` None: the card was tokenised at decode, so its partition (of the
        card id as sent) is not known here.
        """
        where = (f"its card belongs to partition {expected}" if expected is not None
                 else "it is not keyed by its card_id as sent")
        return Rejection(
            "mis_keyed",
            f"record on partition {partition}, but {where}: produce transactions with key = "
            "card_id and the murmur2 partition (Java default; librdkafka "
            "partitioner=murmur2_random)",
        )


def _time_of(value: object) -> int:
    if isinstance(value, Transaction):
        return value.event_time
    if isinstance(value, Label):
        return value.label_time
    raise TypeError(f"no event time on {type(value).__name__}")


def reject(msg: RawRecord, rejection: Rejection, expected_partition: int | None = None
           ) -> DeadLetterRecord:
    """The dead-letter record of ``msg`` (bounded and masked; its time is the record's timestamp).

    Its Kafka key is ``msg``'s key masked (:func:`topics.deadletter.record_key`).
    """
    metrics.DEAD_LETTERS.labels(error_class=rejection.error_class).inc()
    record = dead_letter(
        source_topic=msg.topic, partition=msg.partition, offset=msg.offset, key=msg.key,
        value=msg.value, rejection=rejection, record_time_ms=max(msg.timestamp_ms, 0),
        expected_partition=expected_partition,
    )
    return DeadLetterRecord(record_key(msg.key), _encode(record))


def decode_batch(records: list[RawRecord], decoder: ContractDecoder[T], now_ms: int,
                 skew: SkewRule = SkewRule()
                 ) -> tuple[Decoded[T], list[RawRecord], list[DeadLetterRecord]]:
    """Decode a poll: the valid records as columns (with their raw records) and dead letters."""
    values: list[T] = []
    kept: list[RawRecord] = []
    ingest: list[int] = []
    used: list[int] = []
    dead: list[DeadLetterRecord] = []
    clamped: list[bool] = []
    for msg in records:
        ingest_ms = msg.timestamp_ms if msg.timestamp_ms > 0 else now_ms
        result = decoder.decode(msg.value, ingest_ms)
        if not isinstance(result, Rejection):
            t = _time_of(result)
            at = skew.apply(t, ingest_ms)
            if at is not None:
                clamped.append(at != t)
                values.append(result)
                kept.append(msg)
                ingest.append(ingest_ms)
                used.append(at)
                continue
            result = Rejection(
                "future_event_time",
                f"{'event_time' if isinstance(result, Transaction) else 'label_time'}: "
                f"{(t - ingest_ms) / 60_000:.1f} min ahead of the record's Kafka timestamp, "
                f"over the allowed clock skew of {skew.max_ms / 60_000:g} min "
                "(FRAUD_MAX_SKEW_SECONDS); stamp times in UTC",
            )
        dead.append(reject(msg, result))
    cards = getattr(decoder, "cards", None)
    if cards is not None and cards.tokenised:
        for field, count in cards.take_tokenised().items():
            metrics.PANS_TOKENISED.labels(field=field).inc(count)
    n_clamped = sum(clamped)
    if n_clamped and records:
        metrics.CLAMPED.labels(topic=records[0].topic).inc(n_clamped)
    n = len(values)
    decoded = Decoded(
        values,
        np.fromiter((m.partition for m in kept), np.int32, n),
        np.fromiter((m.offset for m in kept), np.int64, n),
        np.asarray(ingest, dtype=np.int64),
        np.asarray(used, dtype=np.int64),
        np.fromiter((m.fetched for m in kept), np.float64, n),
        np.asarray(clamped, dtype=bool),
    )
    return decoded, kept, dead


def kept_traces(batch: RawBatch, kept: list[RawRecord]) -> dict[int, Header] | None:
    """The trace headers of ``batch`` (by record) re-indexed by decoded row (``kept``)."""
    if not batch.traces:
        return None
    if len(kept) == len(batch.records):  # nothing refused: the same indices
        return batch.traces
    by_offset = {batch.records[i].offset: found for i, found in batch.traces.items()}
    return {row: by_offset[m.offset] for row, m in enumerate(kept)
            if m.offset in by_offset} or None


def count_unrated(txns: list[Transaction], rates: RateTable) -> int:
    """Count in ``fraud_amount_unrated_total{currency}`` the transactions no rate converts.

    They are scored all the same, with neutral amount features
    (:func:`topics.currency.reference_amount`); returns how many there were.
    """
    per = rates.per_reference
    unrated = [code for t in txns if t.currency not in per
               and (code := unrated_currency(t, rates)) is not None]
    for code in unrated:
        metrics.UNRATED.labels(currency=metric_currency(code)).inc()
    return len(unrated)


@dataclass
class _Progress:
    """Per process: each source partition's progress, and what each shard last heard of it."""

    heard: dict[int, int] = field(default_factory=dict)
    told: dict[tuple[int, int], tuple[int, bool]] = field(default_factory=dict)

    def advance(self, partition: int, decoded: Decoded[T]) -> int:
        if len(decoded):
            newest = int(decoded.event_ms.max())
            if newest > self.heard.get(partition, NO_TIME):
                self.heard[partition] = newest
        return self.heard.get(partition, NO_TIME)

    def due(self, partition: int, shard: int, progress: int, idle: bool, has_rows: bool
            ) -> bool:
        """Whether ``shard`` should hear now (and note that it did)."""
        last = self.told.get((partition, shard))
        if (not has_rows and last is not None and last[1] == idle
                and progress - last[0] < MARKER_MS):
            return False
        self.told[(partition, shard)] = (progress, idle)
        return True


def _grouped(shards: np.ndarray) -> dict[int, np.ndarray]:
    """Row indices per shard (in row order)."""
    if len(shards) and (shards == shards[0]).all():
        return {int(shards[0]): np.arange(len(shards))}
    return {int(s): np.flatnonzero(shards == s) for s in np.unique(shards)}


class TransactionRouter:
    """Decoded ``transactions`` polls -> ``(card shard key, CardWork)`` for every card shard.

    A record goes to its card's shard, ``murmur2(card_id) mod card_shards`` (by default
    as many shards as partitions: the card's own partition), also when produced on
    another partition (``route``), unless ``keys`` refuses it (a dead letter). Every
    shard hears where the partition stands (see :data:`MARKER_MS`).

    A card id tokenised at decode (a PAN sent as ``card_id``, :mod:`topics.pan`) is
    routed by its token, like any card, but judged on the card as produced: a record
    whose Kafka key is the PAN of its token (``cards``) is at home on
    ``murmur2(key)``, where the producer's partitioner put it. So the records of a
    PAN-keyed card are not all counted (or refused) as mis-keyed, and the PAN is
    never kept to judge them (the key is re-hashed with the token's key instead).
    """

    def __init__(self, keys: KeyRule, topic: str = "transactions",
                 card_shards: int | None = None, cards: CardGuard | None = None) -> None:
        self.keys = keys
        self.topic = topic
        self.card_shards = card_shards or keys.partitions
        self.cards = cards
        self._progress = _Progress()

    def _tokenised(self, card_id: str) -> bool:
        return (self.cards is not None and self.cards.key is not None
                and card_id.startswith(TOKEN_PREFIX))

    def _produced_home(self, home: np.ndarray, cards: list[str], kept: list[RawRecord]
                       ) -> np.ndarray:
        """Each row's home partition as produced (``home``, by card id, unless tokenised)."""
        if self.cards is None or self.cards.key is None:
            return home
        produced = home
        for i, card in enumerate(cards):
            key = kept[i].key
            if key is not None and card.startswith(TOKEN_PREFIX) and self.cards.same_card(
                    key, card):
                if produced is home:
                    produced = home.copy()
                produced[i] = (murmur2(key) & 0x7FFFFFFF) % self.keys.partitions
        return produced

    def route(self, partition: int, decoded: Decoded[Transaction], kept: list[RawRecord],
              idle: bool = False) -> list[tuple[str, CardWork] | DeadLetterRecord]:
        """The shards' work for one poll of ``partition`` (``kept``: the raw records)."""
        keys, q = self.keys, partition
        out: list[tuple[str, CardWork] | DeadLetterRecord] = []
        routed: dict[int, np.ndarray] = {}
        at_home: frozenset[int] = frozenset()
        if len(decoded):
            cards = [t.card_id for t in decoded.values]
            home = murmur2_partitions(cards, keys.partitions)
            produced = self._produced_home(home, cards, kept)
            if produced is not home:  # PAN-keyed records at home under their PAN
                at_home = frozenset(decoded.offset[(produced == q) & (home != q)].tolist())
            wrong = produced != q
            if wrong.any():
                metrics.MISKEYED.labels(action=keys.policy).inc(int(wrong.sum()))
                if keys.policy != "route":
                    for i in np.flatnonzero(wrong).tolist():
                        expected = None if self._tokenised(cards[i]) else int(home[i])
                        out.append(reject(kept[i], keys.refusal(q, expected),
                                          expected_partition=expected))
                    good = np.flatnonzero(~wrong)
                    decoded, home = decoded.take(good), home[good]
            shard = (home if self.card_shards == keys.partitions else murmur2_partitions(
                [t.card_id for t in decoded.values], self.card_shards))
            routed = _grouped(shard)
        p = self._progress.advance(q, decoded)
        alignment.heard(self.topic, q, p)
        for s in range(self.card_shards):
            rows = routed.get(s)
            if self._progress.due(q, s, p, idle, rows is not None):
                part = None if rows is None else (
                    decoded if len(rows) == len(decoded) else decoded.take(rows))
                out.append((shard_key(s), CardWork(s, q, p, idle, part, at_home)))
        return out


class LabelRouter:
    """Decoded ``labels`` polls -> ``(merchant shard key, MerchantWork)`` for every shard.

    A label goes to its ``merchant_id``'s shard; every shard hears where the partition
    stands (see :data:`MARKER_MS`).
    """

    def __init__(self, merchant_shards: int) -> None:
        self.shards = merchant_shards
        self._progress = _Progress()

    def route(self, partition: int, decoded: Decoded[Label], idle: bool = False
              ) -> list[tuple[str, MerchantWork]]:
        """The shards' work for one poll of ``partition``."""
        q = partition
        routed: dict[int, np.ndarray] = {}
        if len(decoded):
            routed = _grouped(murmur2_partitions([lab.merchant_id for lab in decoded.values],
                                                 self.shards))
        p = self._progress.advance(q, decoded)
        out: list[tuple[str, MerchantWork]] = []
        for s in range(self.shards):
            rows = routed.get(s)
            if self._progress.due(q, s, p, idle, rows is not None):
                part = None if rows is None else decoded.take(rows)
                out.append((shard_key(s), MerchantWork(s, ("labels", q), p, idle, part)))
        return out


@operator
def decode_transactions(
    step_id: str, up: Stream[RawBatch], decoder: ContractDecoder[Transaction],
    skew: SkewRule, keys: KeyRule, clock: Callable[[], float] | None = None,
    card_shards: int | None = None, tracing: Tracing | None = None,
) -> KafkaOpOut[tuple[str, CardWork], DeadLetterRecord]:
    """Polls of ``transactions`` -> :class:`TransactionRouter` work, and dead letters.

    With ``tracing``, the traced rows ride along (``Decoded.traces``). Never raises.
    """
    import time

    now = clock or time.time
    router: TransactionRouter | None = None

    def run(batch: RawBatch) -> list[tuple[str, CardWork] | DeadLetterRecord]:
        nonlocal router
        if router is None:
            router = TransactionRouter(keys, batch.topic, card_shards, decoder.cards)
        decoded, kept, dead = decode_batch(batch.records, decoder, int(now() * 1000), skew)
        if tracing is not None:
            decoded.traces = tracing.carry(kept_traces(batch, kept), len(decoded), now())
        if isinstance(decoder, TransactionDecoder):
            count_unrated(decoded.values, decoder.rates)
        out: list[tuple[str, CardWork] | DeadLetterRecord] = list(dead)
        return out + router.route(batch.partition, decoded, kept, batch.idle)

    decoded_stream = op.flat_map("decode", up, run)
    split = op.branch("split", decoded_stream,
                      lambda item: not isinstance(item, DeadLetterRecord))
    return KafkaOpOut(split.trues, split.falses)  # type: ignore[arg-type]


@operator
def decode_labels(
    step_id: str, up: Stream[RawBatch], decoder: ContractDecoder[Label], skew: SkewRule,
    merchant_shards: int, clock: Callable[[], float] | None = None,
) -> KafkaOpOut[tuple[str, MerchantWork], DeadLetterRecord]:
    """Polls of ``labels`` -> :class:`LabelRouter` work, and dead letters. Never raises."""
    import time

    now = clock or time.time
    router = LabelRouter(merchant_shards)

    def run(batch: RawBatch) -> list[tuple[str, MerchantWork] | DeadLetterRecord]:
        decoded, _, dead = decode_batch(batch.records, decoder, int(now() * 1000), skew)
        out: list[tuple[str, MerchantWork] | DeadLetterRecord] = list(dead)
        return out + router.route(batch.partition, decoded, batch.idle)

    decoded_stream = op.flat_map("decode", up, run)
    split = op.branch("split", decoded_stream,
                      lambda item: not isinstance(item, DeadLetterRecord))
    return KafkaOpOut(split.trues, split.falses)  # type: ignore[arg-type]


def records(batch: RawBatch) -> list[RawRecord]:
    """The records of a poll (for the ``rules`` and ``lists`` topics, read record by record)."""
    return batch.records


__all__ = ["DeadLetterRecord", "KeyRule", "LabelRouter", "SinkRecord", "SkewRule",
           "TransactionRouter", "count_unrated", "decode_batch", "decode_labels",
           "decode_transactions", "records", "reject"]
