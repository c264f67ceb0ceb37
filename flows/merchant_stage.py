"""The merchant stage's Bytewax step: one :class:`~flows.scorer.MerchantScorer` per shard.

Fed the card stage's results for the shard's merchants from every card shard,
every label naming one of its merchants, and a copy of every ``rules`` and ``lists`` record
(broadcast to every shard, :func:`broadcast`). Rules and lists apply as they
arrive (a ``lists`` record once per process: the shards' rule books share the
process's list table, :mod:`rules.list_table`); transactions and labels wait in an
:class:`~state.reorder.EventTimeOrder` until the watermark over every card shard and
``labels`` partition lets them go, and are applied in event-time order, so the merchant
features equal the offline replay's whatever order the partitions are read in. A label
changes only the merchant of the transaction it joins (:mod:`state.labels`); one whose transaction
never becomes known here expires to ``dead-letter`` (``label_unjoined``,
:func:`expired_letters`). With several merchant shards a label reaches the shard of
the merchant it names: if that is not its transaction's, it does not join there and
expires the same way (it is never applied to the merchant it names).

Its recovery snapshot holds the store's sequence number, the open drift windows,
the rule book (rules, their approvals, offsets: no list entry, the process reads
the ``lists`` topic at start-up, :mod:`flows.list_loader`) and the reorder buffer
with the inputs' progress, so a crash loses no drift count, no rule, no list entry
and no buffered transaction: verdicts stored after the snapshot are counted again
as they are replayed (see :class:`~state.records.Incarnation`), and re-read rule
and list records are no-ops.

A shard idle for ``idle_seconds`` hands its open drift windows on, so the end of
a stream (or a quiet shard) does not hold them back forever.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple

import msgspec
from bytewax.operators import StatefulBatchLogic

from drift.windows import DriftPartial, PartitionDrift
from flows import alignment, metrics
from flows.decode import DeadLetterRecord
from flows.items import CardRows, Decoded, MerchantWork, SinkBatch
from flows.kafka import RawRecord
from flows.routing import shard_key
from flows.scorer import MerchantScorer
from lifecycle import process as lifecycle
from state.errors import StaleStateError
from state.merchant_store import LabelSource
from state.records import PendingLabel
from state.reorder import EVERYTHING, EventTimeOrder
from topics.contracts import Label
from topics.deadletter import dead_letter
from topics.validation import Rejection

MerchantOutput = SinkBatch | DeadLetterRecord | DriftPartial
log = logging.getLogger(__name__)
_encode = msgspec.json.Encoder().encode


class RuleRecord(NamedTuple):
    """One ``rules`` or ``lists`` record, addressed to one merchant shard."""

    shard: int
    record: RawRecord


def broadcast(record: RawRecord, shards: int) -> list[tuple[str, RuleRecord]]:
    """A rule or list record keyed to every merchant shard (each keeps its own rule book).

    A list record is applied by the first shard of a process to get it: the books of a
    process share its list table (:mod:`rules.list_table`).
    """
    return [(shard_key(s), RuleRecord(s, record)) for s in range(shards)]


MerchantInput = MerchantWork | RuleRecord


def label_sources(chunk: Decoded[Label]) -> list[LabelSource]:
    """Where each label of ``chunk`` was read (``labels`` partition, offset, Kafka timestamp)."""
    return [LabelSource(p, o, t) for p, o, t in zip(
        chunk.partition.tolist(), chunk.offset.tolist(), chunk.ingest_ms.tolist(), strict=True)]


def expired_letters(expired: list[PendingLabel], topic: str, horizon_ms: int
                    ) -> list[DeadLetterRecord]:
    """Dead letters (``label_unjoined``) of labels whose transaction never became known.

    The label was never applied to any merchant (its ``merchant_id`` is not trusted on
    its own word, :mod:`state.labels`); the dead letter carries the label as read (it
    holds a card token, never card data) and where it is on ``topic``.
    """
    out: list[DeadLetterRecord] = []
    days = horizon_ms // 86_400_000
    for p in expired:
        key = p.label.transaction_id.encode()
        rejection = Rejection(
            "label_unjoined",
            f"transaction {p.label.transaction_id!r} was not scored here within {days} days "
            "of the label (FRAUD_VERDICT_HORIZON_DAYS), or long before it (over "
            "FRAUD_LABEL_HORIZON_DAYS): the label changed no merchant feature; re-send it "
            "once its transaction is on the transactions topic")
        metrics.DEAD_LETTERS.labels(error_class=rejection.error_class).inc()
        metrics.LABELS_EXPIRED.inc()
        letter = dead_letter(source_topic=topic, partition=max(p.partition, 0),
                             offset=max(p.offset, 0), key=key, value=_encode(p.label),
                             rejection=rejection, record_time_ms=max(p.record_ms, 0))
        out.append(DeadLetterRecord(key, _encode(letter)))
    return out


class MerchantSnapshot(NamedTuple):
    """What Bytewax keeps for a merchant shard between snapshots."""

    seq: int
    drift: PartitionDrift | None
    rules: bytes | None = None
    """The rule book (:meth:`rules.book.RuleBook.snapshot`: no list entry)."""
    order: EventTimeOrder[CardRows, Decoded[Label]] | None = None
    """Transactions and labels waiting for the watermark, and the inputs' progress."""


class MerchantLogic(StatefulBatchLogic[MerchantInput, MerchantOutput, MerchantSnapshot]):
    """Bytewax adapter of one merchant shard (its scorer is opened at the first batch)."""

    def __init__(self, open_scorer: Callable[[int, MerchantSnapshot | None], MerchantScorer],
                 resumed: MerchantSnapshot | None, idle_seconds: float, card_shards: int,
                 label_partitions: int, reorder_max: int = 200_000,
                 clock: Callable[[], float] = time.time, grace_s: float = 1.0,
                 labels_topic: str = "labels") -> None:
        self._open_scorer = open_scorer
        self._labels_topic = labels_topic
        self._clock = clock
        self._resumed = resumed
        self._idle_seconds = idle_seconds
        self._scorer: MerchantScorer | None = None
        self._last_batch = self._clock()
        order = resumed.order if resumed is not None and resumed.order is not None else None
        self._order: EventTimeOrder[CardRows, Decoded[Label]] = (
            order or EventTimeOrder(reorder_max))
        self._order.limit = reorder_max
        self._order.watermark.grace_s = grace_s
        self._order.watermark.resumed()  # none is known to be idle yet, whatever it was
        self._order.watermark.expect([("cards", s) for s in range(card_shards)]
                                     + [("labels", q) for q in range(label_partitions)])
        self._counted = (self._order.late, self._order.late_labels, self._order.forced)
        self._drift_late: int | None = None  # the drift windows' late rows counted so far
        self._shard = -1

    def _opened(self, shard: int) -> MerchantScorer:
        if self._scorer is None:
            self._shard = shard
            resumed = self._resumed
            scorer = self._open_scorer(shard, resumed)
            self._drift_late = scorer.drift.late_rows if scorer.drift is not None else None
            store = scorer.store
            if resumed is not None:
                if store.seq < resumed.seq:
                    store.close()
                    raise StaleStateError(
                        f"{store.db.identity.describe()}: the state store has applied "
                        f"{store.seq} changes, but Bytewax's recovery snapshot says "
                        f"{resumed.seq}; the state directory is stale or lost. Restore it, or "
                        "delete both the state directory (FRAUD_STATE_DIR) and the recovery "
                        "directory to rebuild from the topic"
                    )
                store.resume(resumed.seq)
            metrics.store_opened(store.db)
            self._scorer = scorer
        return self._scorer

    def on_batch(self, values: list[MerchantInput]) -> tuple[list[MerchantOutput], bool]:
        """Apply rules and labels, buffer transactions; score what the watermark releases."""
        first = values[0]
        scorer = self._opened(first.shard)
        self._last_batch = self._clock()
        order = self._order
        out: list[MerchantOutput] = []
        rules = [v.record for v in values if isinstance(v, RuleRecord)]
        if rules:
            out += scorer.apply_rules(rules)
        for v in values:
            if isinstance(v, RuleRecord):
                continue
            order.watermark.heard(v.source, v.progress, v.idle, self._clock())
            if isinstance(v.rows, CardRows):
                order.add_txns(v.rows)
            elif v.rows is not None:
                order.add_labels(v.rows)
        out += self._release(scorer)
        return out, False

    def _release(self, scorer: MerchantScorer, everything: bool = False) -> list[MerchantOutput]:
        order = self._order
        if everything:
            order.watermark.value = EVERYTHING
        if log.isEnabledFor(logging.DEBUG):
            w = order.watermark
            log.debug("merchant shard %d: watermark %d, %d buffered, inputs %s", self._shard,
                      w.value, order.buffered,
                      {k: (p, w.idle.get(k)) for k, p in w.progress.items()})
        out: list[MerchantOutput] = []
        for is_label, chunk in order.release(CardRows.concat, Decoded.concat, self._clock()):
            if is_label:
                labels: Decoded[Label] = chunk  # type: ignore[assignment]
                scorer.apply_labels(labels.values, label_sources(labels))
                continue
            verdicts, dead = scorer.score(chunk)  # type: ignore[arg-type]
            if verdicts is not None:
                out.append(verdicts)
            out += dead
        out += expired_letters(scorer.store.take_expired(), self._labels_topic,
                               scorer.store.db.options.txn_horizon_ms)
        partial = scorer.drift.close() if scorer.drift is not None else None
        if partial is not None:
            out.append(partial)
        self._metrics()
        metrics.LABELS_WAITING.labels(shard=str(self._shard)).set(scorer.store.waiting)
        return out

    def _metrics(self) -> None:
        order = self._order
        late, labels, forced = (now - then for now, then in zip(
            (order.late, order.late_labels, order.forced), self._counted, strict=True))
        if late:
            metrics.EVENT_TIME_LATE.labels(kind="transaction").inc(late)
        if labels:
            metrics.EVENT_TIME_LATE.labels(kind="label").inc(labels)
        if forced:
            metrics.REORDER_FORCED.inc(forced)
        self._counted = (order.late, order.late_labels, order.forced)
        drift = self._scorer.drift if self._scorer is not None else None
        if drift is not None:
            if drift.late_rows > (self._drift_late or 0):
                metrics.DRIFT_LATE.inc(drift.late_rows - (self._drift_late or 0))
            self._drift_late = drift.late_rows
        shard = str(self._shard)
        metrics.REORDER_BUFFERED.labels(shard=shard).set(order.buffered)
        watermark = order.watermark.value
        if 0 < watermark < EVERYTHING:
            metrics.WATERMARK.labels(shard=shard).set(watermark / 1000)
        alignment.watermark_at(self._shard, watermark)

    def notify_at(self) -> datetime | None:
        """When the watermark may move on by itself, or to hand idle drift windows on."""
        due = [self._order.watermark.recheck_at()]
        drift = self._scorer.drift if self._scorer is not None else None
        if drift is not None and drift.has_open_windows:
            due.append(self._last_batch + self._idle_seconds)
        times = [t for t in due if t is not None]
        return datetime.fromtimestamp(min(times), tz=UTC) if times else None

    def on_notify(self) -> tuple[list[MerchantOutput], bool]:
        """Release what the watermark lets go now; a quiet shard hands its drift windows on."""
        if self._scorer is None:
            return [], False
        out = self._release(self._scorer)
        drift = self._scorer.drift
        if drift is not None and self._clock() >= self._last_batch + self._idle_seconds:
            partial = drift.close(idle=True)
            if partial is not None:
                out.append(partial)
        return out, False

    def on_eof(self) -> tuple[list[MerchantOutput], bool]:
        """End of a bounded input: score everything still waiting; write the sample rows.

        Not when a stop or the first snapshot ended the input
        (:func:`lifecycle.process.stop_requested`): the reorder buffer is in the final
        snapshot, and the next execution releases it in event-time order. (Released at a
        stop, with the watermark at "everything", the snapshot kept that watermark: after
        the restart every record was scored on arrival, out of event-time order, and a
        stop and start between two halves of a labelled history changed 217 of 3,000
        scores, ``tests/integration/test_rescale.py``.)
        """
        if self._scorer is None:
            return [], False
        stopping = lifecycle.stop_requested()
        out = [] if stopping else self._release(self._scorer, everything=True)
        if self._scorer.samples is not None:
            self._scorer.samples.flush()
        return out, False

    def snapshot(self) -> MerchantSnapshot:
        """The store's sequence number and copies of the drift windows and reorder buffer."""
        metrics.LAST_SNAPSHOT.set(time.time())
        order = self._order.frozen()  # Bytewax pickles it later: hand over a frozen copy
        if self._scorer is None:
            resumed = self._resumed
            return MerchantSnapshot(resumed.seq if resumed else 0,
                                    resumed.drift if resumed else None,
                                    resumed.rules if resumed else None, order)
        scorer = self._scorer
        identity = scorer.store.db.identity
        metrics.STATE_BYTES.labels(store=f"merchants/{identity.shard}").set(
            scorer.store.db.approximate_disk_bytes())
        return MerchantSnapshot(scorer.store.checkpoint(), copy.deepcopy(scorer.drift),
                                scorer.rules.snapshot() if scorer.rules is not None else None,
                                order)
