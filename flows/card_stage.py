"""The card stage's Bytewax step: one :class:`~state.card_store.CardStore` per card shard.

A card's shard is ``murmur2(card_id) mod FRAUD_CARD_SHARDS`` (one shard serves
several partitions, or one each). A card shard gets, from every ``transactions``
partition, its cards' records (a correctly keyed card's come from its own
partition, in offset order; mis-keyed ones from others) and where that partition
stands in event time. Within a batch each source partition's records keep their
order; records from different partitions are merged by event time.

Mis-keyed records (on another partition than their card's: produced without a
key, with another key or partitioner) arrive from several partitions at slightly
different times. So that a card's velocity counts every record produced before
the one being scored, they are **held** for ``hold_ms`` (and so is any record of a
card that has records held), then applied in event-time order once every input of the
shard has passed them in event time (its watermark): in a backlog, where partitions are
read seconds apart, the wall-clock hold alone would let a straggler from a partition
read later miss it. In live traffic the watermark passes them within the hold, and the
merchant stage waits for the same watermark anyway. Correctly keyed cards are never held.

Results go to the merchant shards as :class:`~flows.items.CardRows`, each shard
also told how far this card shard has got in event time (the smallest progress of
its inputs and of the records it holds), so the merchant stage knows what has
arrived (:mod:`state.reorder`).

The step's recovery snapshot is the store's sequence number, the held records and
the inputs' progress: a store found *behind* it on resume (a lost or stale state
volume) would silently skip transactions, so the step stops instead and says what
to do.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple

import msgspec
import numpy as np
from bytewax.operators import StatefulBatchLogic

from flows import metrics
from flows.decode import MARKER_MS, DeadLetterRecord
from flows.items import CardRows, CardWork, Decoded, MerchantWork
from flows.routing import shard_key
from lifecycle import process as lifecycle
from state import card_store as cs
from state.card_store import CardBatch, CardStore
from state.errors import StaleStateError
from state.features import group
from state.inputs import FeatureInputs
from state.kernels.windows import NO_TIME
from state.partitioning import murmur2_partitions
from state.records import body_digests
from state.reorder import Watermark
from topics.contracts import Transaction
from topics.deadletter import dead_letter
from topics.validation import Rejection

_encode = msgspec.json.Encoder().encode
#: ``amounts(txns)``: reference-currency amounts (float64 array) of decoded transactions.
Amounts = Callable[[list[Transaction]], np.ndarray]
CardOutput = tuple[str, MerchantWork] | DeadLetterRecord


def merge_partitions(txns: Decoded[Transaction]) -> Decoded[Transaction]:
    """Keep each source partition's order; interleave partitions by event time."""
    parts = txns.partition
    if not len(parts) or (parts == parts[0]).all():
        return txns
    runs = [np.flatnonzero(parts == p).tolist() for p in np.unique(parts)]
    times = txns.event_ms
    order = [i for _, i in heapq.merge(*[[(times[i], i) for i in run] for run in runs],
                                       key=lambda x: x[0])]
    return txns.take(np.asarray(order, dtype=np.int64))


def conflict_letter(txn: Transaction, partition: int, offset: int, ingest_ms: int, topic: str,
                    first_partition: int, first_offset: int) -> DeadLetterRecord:
    """The dead letter of a transaction id seen before with another body."""
    metrics.DUPLICATES.labels(kind="conflict").inc()
    metrics.DEAD_LETTERS.labels(error_class="duplicate_conflict").inc()
    rejection = Rejection(
        "duplicate_conflict",
        f"transaction_id {txn.transaction_id[:60]!r} was already scored from partition "
        f"{first_partition} offset {first_offset} with another body; this one (partition "
        f"{partition} offset {offset}) is refused: give a corrected transaction a new id",
    )
    value = _encode(txn)  # the decoded transaction (its raw bytes stay on the input topic)
    record = dead_letter(
        source_topic=topic, partition=partition, offset=offset, key=txn.card_id.encode(),
        value=value, rejection=rejection, record_time_ms=ingest_ms,
        first_partition=first_partition, first_offset=first_offset,
    )
    return DeadLetterRecord(txn.card_id.encode(), _encode(record))


class CardSnapshot(NamedTuple):
    """What Bytewax keeps for a card shard: sequence number, held records, inputs' progress."""

    seq: int
    held: Decoded[Transaction] | None = None
    inputs: Watermark | None = None


class CardLogic(StatefulBatchLogic[CardWork, CardOutput, CardSnapshot]):
    """Bytewax adapter of one card shard's store (opened at the first batch)."""

    def __init__(self, open_store: Callable[[int, int], CardStore], amounts: Amounts, topic: str,
                 partitions: int, merchant_shards: int, resumed: CardSnapshot | None,
                 hold_ms: int = 0, clock: Callable[[], float] = time.time,
                 grace_s: float = 1.0, card_shards: int | None = None,
                 before_batch: Callable[[], object] | None = None) -> None:
        self._open_store = open_store
        self._amounts = amounts
        self._topic = topic
        self._partitions = partitions
        self._by_partition = card_shards in (None, partitions)  # shard s = partition s
        self._merchant_shards = merchant_shards
        self._resume = resumed.seq if resumed is not None else None
        self._store: CardStore | None = None
        self._shard = -1
        self._before_batch = before_batch
        self._hold_s = hold_ms / 1000
        self._clock = clock
        self._held = resumed.held if resumed is not None else None
        self._inputs = (resumed.inputs if resumed is not None and resumed.inputs is not None
                        else Watermark())
        self._inputs.grace_s = grace_s
        self._inputs.resumed()  # none is known to be idle yet, whatever the snapshot says
        self._inputs.expect(range(partitions))
        self._release_at = clock() + self._hold_s if self._held is not None else 0.0
        self._told: dict[int, tuple[int, bool]] = {}

    def _opened(self, shard: int) -> CardStore:
        if self._store is None:
            self._shard = shard
            store = self._open_store(shard, self._resume or 0)  # (shard, at least seq)
            if self._resume is not None and store.seq < self._resume:
                store.close()
                raise StaleStateError(
                    f"{store.db.identity.describe()}: the state store has applied "
                    f"{store.seq} changes, but Bytewax's recovery snapshot says "
                    f"{self._resume}; the state directory is stale or lost. Restore it, or "
                    "delete both the state directory (FRAUD_STATE_DIR) and the recovery "
                    "directory to rebuild from the topic"
                )
            metrics.store_opened(store.db)
            self._store = store
        return self._store

    def on_batch(self, values: list[CardWork]) -> tuple[list[CardOutput], bool]:
        """Apply the batch to the card store (mis-keyed records held); tell the merchants."""
        if self._before_batch is not None:
            self._before_batch()
        self._opened(values[0].shard)
        parts = []
        at_home: set[tuple[int, int]] = set()
        for work in values:
            self._inputs.heard(work.source, work.progress, work.idle, self._clock())
            if work.txns is not None and len(work.txns):
                parts.append(work.txns)
                at_home.update((work.source, o) for o in work.produced_home)
        ready = merge_partitions(Decoded.concat(parts)) if parts else None
        if ready is not None and self._hold_s > 0:
            ready = self._hold(ready, at_home)
        if ready is None:
            ready = self._release_due()
        return self._apply(ready), False

    def _hold(self, ordered: Decoded[Transaction],
              at_home: set[tuple[int, int]] | None = None) -> Decoded[Transaction] | None:
        """Hold mis-keyed records and their cards' records; release them when due.

        ``at_home``: ``(partition, offset)`` of records the router found on their
        producer's partition though their (tokenised) card id hashes elsewhere: a card
        keyed by its PAN keeps its order on that partition, so it is not held.
        """
        cards = [t.card_id for t in ordered.values]
        held_cards = {t.card_id for t in self._held.values} if self._held is not None else set()
        home = (self._shard if self._by_partition
                else murmur2_partitions(cards, self._partitions))
        away = ordered.partition != home
        if at_home and away.any():
            where = np.flatnonzero(away)
            away[where] = [(p, o) not in at_home for p, o in zip(
                ordered.partition[where].tolist(), ordered.offset[where].tolist(), strict=True)]
        if not away.any() and not held_cards:
            return ordered
        hold = np.fromiter((a or c in held_cards for a, c in zip(away.tolist(), cards,
                                                                 strict=True)),
                           bool, len(cards))
        if hold.any():  # a held card's later records wait with it
            held_cards.update(c for c, h in zip(cards, hold.tolist(), strict=True) if h)
            hold |= np.fromiter((c in held_cards for c in cards), bool, len(cards))
            if self._held is None:
                self._release_at = self._clock() + self._hold_s
            taken = ordered.take(np.flatnonzero(hold))
            self._held = taken if self._held is None else Decoded.concat([self._held, taken])
        ready = ordered.take(np.flatnonzero(~hold)) if hold.any() else ordered
        released = self._release_due()
        if released is not None:
            ready = Decoded.concat([ready, released]) if len(ready) else released
        return ready if len(ready) else None

    def _release_due(self) -> Decoded[Transaction] | None:
        """The held records whose hold is over and that every input has passed, if any."""
        if self._held is None or self._clock() < self._release_at:
            return None
        return self._release(self._inputs.update(self._clock()))

    def _release(self, upto: int | None = None) -> Decoded[Transaction] | None:
        """Held records up to event time ``upto`` (all: None) in event-time order; the rest stay."""
        held = self._held
        assert held is not None
        order = np.argsort(held.event_ms, kind="stable")  # a partition keeps its order
        if upto is None or int(held.event_ms.max()) <= upto:
            self._held = None
            return held.take(order)
        due = held.event_ms[order] <= upto
        if not due.any():
            return None
        self._held = held.take(order[~due])
        return held.take(order[due])

    def notify_at(self) -> datetime | None:
        """When held mis-keyed records are due, or the inputs' watermark may move on."""
        holding = self._held is not None and self._clock() < self._release_at
        due = [t for t in (self._release_at if holding else None,
                           self._inputs.recheck_at()) if t is not None]
        return datetime.fromtimestamp(min(due), tz=UTC) if due else None

    def on_notify(self) -> tuple[list[CardOutput], bool]:
        """Apply the held records whose hold is over; tell the merchants where this shard is."""
        return self._apply(self._release_due()), False

    def on_eof(self) -> tuple[list[CardOutput], bool]:
        """End of a bounded input: apply whatever is held.

        Not when a stop or the first snapshot ended the input
        (:func:`lifecycle.process.stop_requested`): the held records are in the final
        snapshot and the next execution goes on holding them.
        """
        held = self._held is not None and not lifecycle.stop_requested()
        return self._apply(self._release() if held else None), False

    def progress(self) -> tuple[int, bool]:
        """How far this shard has got, and whether it is idle.

        The progress is its inputs' watermark, held records excluded; idle means every
        input is idle and nothing is held.
        """
        watermark = self._inputs.update(self._clock())
        inputs = self._inputs
        idle = all(inputs.idle.get(name, False) for name in inputs.progress)
        if self._held is not None and len(self._held):
            watermark = min(watermark, int(self._held.event_ms.min()) - 1)
            idle = False
        return watermark, idle

    def _apply(self, ready: Decoded[Transaction] | None) -> list[CardOutput]:
        if self._shard < 0:
            return []  # nothing heard yet: nothing to say
        out: list[CardOutput] = []
        routed: dict[int, CardRows] = {}
        if ready is not None and len(ready):
            rows, dead = self._process(ready)
            out += dead
            if rows is not None:
                shards = murmur2_partitions([t.merchant_id for t in rows.txns.values],
                                            self._merchant_shards)
                order, offsets = group(shards, self._merchant_shards)
                if len(rows) == 1 or (shards == shards[0]).all():
                    routed[int(shards[0])] = rows
                else:
                    grouped = rows.take(order)
                    bounds = offsets.tolist()
                    for s, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
                        if b > a:
                            routed[s] = grouped.slice(a, b)
        progress, idle = self.progress()
        source = ("cards", self._shard)
        for s in range(self._merchant_shards):
            part = routed.get(s)
            last, was_idle = self._told.get(s, (NO_TIME, False))
            if part is None and progress - last < MARKER_MS and idle == was_idle:
                continue
            self._told[s] = (progress, idle)
            out.append((shard_key(s), MerchantWork(s, source, progress, idle, part)))
        return out

    def _process(self, ready: Decoded[Transaction]
                 ) -> tuple[CardRows | None, list[DeadLetterRecord]]:
        store = self._opened(self._shard)
        txns = ready.values
        amounts = self._amounts(txns)
        body = body_digests(txns)
        inputs = FeatureInputs.of(txns, amounts, ready.event_ms)
        batch = CardBatch([t.transaction_id for t in txns], [t.card_id for t in txns], body,
                          ready.partition, ready.offset, inputs)
        outcome = store.process(batch)
        carded = self._clock()
        conflict = outcome.kind == cs.CONFLICT
        dead = [conflict_letter(txns[i], int(ready.partition[i]), int(ready.offset[i]),
                                int(ready.ingest_ms[i]), self._topic,
                                int(outcome.first_partition[i]), int(outcome.first_offset[i]))
                for i in np.flatnonzero(conflict).tolist()]
        keep = np.flatnonzero(~conflict)
        if not len(keep):
            return None, dead
        rows = CardRows(ready, inputs, body, outcome.rows, outcome.has_row,
                        np.full(len(txns), carded))
        return (rows if len(keep) == len(txns) else rows.take(keep)), dead

    def snapshot(self) -> CardSnapshot:
        """The store's sequence number, the held records, the inputs' progress."""
        metrics.LAST_SNAPSHOT.set(time.time())
        if self._store is not None:
            metrics.STATE_BYTES.labels(store=f"cards/{self._shard}").set(
                self._store.db.approximate_disk_bytes())
        seq = (self._store.checkpoint() if self._store is not None
               else self._resume if self._resume is not None else 0)
        inputs = Watermark(dict(self._inputs.progress), dict(self._inputs.idle),
                           self._inputs.value, self._inputs.grace_s)
        return CardSnapshot(seq, self._held, inputs)

    def close(self) -> None:
        """Close the store (end of the stream)."""
        if self._store is not None:
            self._store.close()
            self._store = None
