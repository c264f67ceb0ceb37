"""The card stage's Bytewax step: one :class:`~state.card_store.CardStore` per card shard.

Records arrive keyed by their card's partition (murmur2 of the card id): a
correctly keyed card's records come from that one partition in offset order,
and mis-keyed ones are routed here from other partitions. Within a batch each
source partition's records keep their order; records from different partitions
are merged by event time (so a burst produced without a key is applied in
event-time order as far as one batch reaches).

Mis-keyed records (on another partition than their card's: produced without a
key, with another key or partitioner) arrive from several partitions at slightly
different times. So that a card's velocity counts every record produced before
the one being scored, they are **held** for ``hold_ms`` (and so is any record of a
card that has records held), then applied together in event-time order. Correctly
keyed cards are never held.

The step's recovery snapshot is the store's sequence number and the held
records: a store found *behind* it on resume (a lost or stale state volume) would
silently skip transactions, so the step stops instead and says what to do.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import NamedTuple

import msgspec
import numpy as np
from bytewax.operators import StatefulBatchLogic

from flows import metrics
from flows.decode import DeadLetterRecord, Sourced
from state import card_store as cs
from state.card_store import CardIn, CardStore
from state.errors import StaleStateError
from state.inputs import AmountFn, TxnInput, txn_input
from state.records import body_digest
from topics.contracts import Transaction
from topics.deadletter import dead_letter
from topics.validation import Rejection

_encode = msgspec.json.Encoder().encode


class CardResult(NamedTuple):
    """A transaction on its way to the merchant stage, with its card group."""

    item: Sourced[Transaction]
    features: TxnInput
    body: int
    row: np.ndarray | None
    """Card group (float32); None for a repeat whose row the card store no longer keeps."""
    carded: float = 0.0
    """When the card stage was done with it (epoch seconds; per-stage latency)."""


def merge_partitions(values: Sequence[Sourced[Transaction]]) -> list[Sourced[Transaction]]:
    """Keep each source partition's order; interleave partitions by event time."""
    first = values[0].partition
    if all(v.partition == first for v in values):
        return list(values)
    runs: dict[int, list[Sourced[Transaction]]] = {}
    for v in values:
        runs.setdefault(v.partition, []).append(v)
    return list(heapq.merge(*runs.values(), key=lambda v: v.event_ms))


def conflict_letter(item: Sourced[Transaction], topic: str, first_partition: int,
                    first_offset: int) -> DeadLetterRecord:
    """The dead letter of a transaction id seen before with another body."""
    metrics.DUPLICATES.labels(kind="conflict").inc()
    metrics.DEAD_LETTERS.labels(error_class="duplicate_conflict").inc()
    txn = item.value
    rejection = Rejection(
        "duplicate_conflict",
        f"transaction_id {txn.transaction_id[:60]!r} was already scored from partition "
        f"{first_partition} offset {first_offset} with another body; this one (partition "
        f"{item.partition} offset {item.offset}) is refused: give a corrected transaction a "
        "new id",
    )
    value = _encode(txn)  # the decoded transaction (its raw bytes stay on the input topic)
    record = dead_letter(
        source_topic=topic, partition=item.partition, offset=item.offset,
        key=txn.card_id.encode(), value=value, rejection=rejection,
        record_time_ms=item.ingest_ms, first_partition=first_partition,
        first_offset=first_offset,
    )
    return DeadLetterRecord(txn.card_id.encode(), _encode(record))


class CardSnapshot(NamedTuple):
    """What Bytewax keeps for a card shard: the store's sequence number, the held records."""

    seq: int
    held: tuple[Sourced[Transaction], ...] = ()


class CardLogic(StatefulBatchLogic[Sourced[Transaction], CardResult | DeadLetterRecord,
                                   CardSnapshot]):
    """Bytewax adapter of one card shard's store (opened at the first batch)."""

    def __init__(self, open_store: Callable[[int], CardStore], shard_of: Callable[[str], int],
                 amount_of: AmountFn, topic: str, resumed: CardSnapshot | None,
                 hold_ms: int = 0, clock: Callable[[], float] = time.time) -> None:
        self._open_store = open_store
        self._shard_of = shard_of
        self._amount_of = amount_of
        self._topic = topic
        self._resume = resumed.seq if resumed is not None else None
        self._store: CardStore | None = None
        self._shard = -1
        self._hold_s = hold_ms / 1000
        self._clock = clock
        self._held: list[Sourced[Transaction]] = list(resumed.held) if resumed else []
        self._release_at = clock() + self._hold_s if self._held else 0.0

    def _opened(self, card_id: str) -> CardStore:
        if self._store is None:
            self._shard = self._shard_of(card_id)
            store = self._open_store(self._shard)
            if self._resume is not None and store.seq < self._resume:
                store.close()
                raise StaleStateError(
                    f"{store.db.identity.describe()}: the state store has applied "
                    f"{store.seq} changes, but Bytewax's recovery snapshot says "
                    f"{self._resume}; the state directory is stale or lost. Restore it, or "
                    "delete both the state directory (FRAUD_STATE_DIR) and the recovery "
                    "directory to rebuild from the topic"
                )
            self._store = store
        return self._store

    def on_batch(self, values: list[Sourced[Transaction]]
                 ) -> tuple[list[CardResult | DeadLetterRecord], bool]:
        """Apply the batch to the card store (mis-keyed records held); conflicts: dead letters."""
        self._opened(values[0].value.card_id)
        ordered = merge_partitions(values)
        if self._hold_s > 0:
            ordered = self._hold(ordered)
        return self._apply(ordered), False

    def _hold(self, ordered: list[Sourced[Transaction]]) -> list[Sourced[Transaction]]:
        """Hold mis-keyed records and their cards' records; release them when due."""
        held_cards = {s.value.card_id for s in self._held}
        ready: list[Sourced[Transaction]] = []
        for s in ordered:
            if s.partition != self._shard or s.value.card_id in held_cards:
                if not self._held:
                    self._release_at = self._clock() + self._hold_s
                self._held.append(s)
                held_cards.add(s.value.card_id)
            else:
                ready.append(s)
        if self._held and self._clock() >= self._release_at:
            ready += self._release()
        return ready

    def _release(self) -> list[Sourced[Transaction]]:
        held, self._held = self._held, []
        return sorted(held, key=lambda s: s.event_ms)  # stable: a partition keeps its order

    def notify_at(self) -> datetime | None:
        """When held mis-keyed records are due."""
        return datetime.fromtimestamp(self._release_at, tz=UTC) if self._held else None

    def on_notify(self) -> tuple[list[CardResult | DeadLetterRecord], bool]:
        """Apply the held records now that their hold is over."""
        return self._apply(self._release()), False

    def on_eof(self) -> tuple[list[CardResult | DeadLetterRecord], bool]:
        """End of the input: apply whatever is held."""
        return self._apply(self._release()), False

    def _apply(self, ordered: list[Sourced[Transaction]]
               ) -> list[CardResult | DeadLetterRecord]:
        if not ordered:
            return []
        store = self._opened(ordered[0].value.card_id)
        amount_of = self._amount_of
        items = [
            CardIn(s.value, txn_input(s.value, amount_of(s.value), s.event_ms),
                   body_digest(s.value), s.partition, s.offset)
            for s in ordered
        ]
        outs = store.process(items)
        carded = self._clock()
        result: list[CardResult | DeadLetterRecord] = []
        for s, it, out in zip(ordered, items, outs, strict=True):
            if out.kind == cs.CONFLICT:
                assert out.first is not None
                result.append(conflict_letter(s, self._topic, out.first.partition,
                                              out.first.offset))
            else:
                result.append(CardResult(s, it.features, it.body, out.row, carded))
        return result

    def snapshot(self) -> CardSnapshot:
        """The store's sequence number (see :meth:`state.db.StateDB.checkpoint`), held records."""
        metrics.LAST_SNAPSHOT.set(time.time())
        if self._store is not None:
            metrics.STATE_BYTES.labels(store=f"cards/{self._shard}").set(
                self._store.db.approximate_disk_bytes())
        seq = (self._store.checkpoint() if self._store is not None
               else self._resume if self._resume is not None else 0)
        return CardSnapshot(seq, tuple(self._held))

    def close(self) -> None:
        """Close the store (end of the stream)."""
        if self._store is not None:
            self._store.close()
            self._store = None
