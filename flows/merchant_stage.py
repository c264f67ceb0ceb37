"""The merchant stage's Bytewax step: one :class:`~flows.scorer.MerchantScorer` per shard.

Fed every transaction (from the card stage) and every label of the shard's
merchants, and a copy of every ``rules`` and ``lists`` record (broadcast to every
shard, :func:`broadcast`). Its recovery snapshot holds the store's sequence
number, the open drift windows and the rule book, so a crash loses no drift
count and no rule: the windows resume from the snapshot, verdicts stored after it
are counted again as they are replayed (see :class:`~state.records.Incarnation`),
and re-read rule records are no-ops.

A shard idle for ``idle_seconds`` hands its open drift windows on, so the end of
a stream (or a quiet shard) does not hold them back forever.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple

from bytewax.operators import StatefulBatchLogic

from flows import metrics
from flows.card_stage import CardResult
from flows.decode import DeadLetterRecord, Sourced
from flows.drift import DriftPartial, PartitionDrift
from flows.kafka import RawRecord, SinkRecord
from flows.routing import shard_key
from flows.scorer import MerchantScorer
from state.errors import StaleStateError
from topics.contracts import Label

MerchantOutput = SinkRecord | DeadLetterRecord | DriftPartial


class RuleRecord(NamedTuple):
    """One ``rules`` or ``lists`` record, addressed to one merchant shard."""

    shard: int
    record: RawRecord


def broadcast(record: RawRecord, shards: int) -> list[tuple[str, RuleRecord]]:
    """A rule or list record keyed to every merchant shard (each keeps its own rule book)."""
    return [(shard_key(s), RuleRecord(s, record)) for s in range(shards)]


MerchantInput = CardResult | Sourced[Label] | RuleRecord


class MerchantSnapshot(NamedTuple):
    """What Bytewax keeps for a merchant shard between snapshots."""

    seq: int
    drift: PartitionDrift | None
    rules: bytes | None = None
    """The rule book (:meth:`rules.book.RuleBook.snapshot`)."""


class MerchantLogic(StatefulBatchLogic[MerchantInput, MerchantOutput, MerchantSnapshot]):
    """Bytewax adapter of one merchant shard (its scorer is opened at the first batch)."""

    def __init__(self, open_scorer: Callable[[int, MerchantSnapshot | None], MerchantScorer],
                 shard_of: Callable[[str], int], resumed: MerchantSnapshot | None,
                 idle_seconds: float) -> None:
        self._open_scorer = open_scorer
        self._shard_of = shard_of
        self._resumed = resumed
        self._idle_seconds = idle_seconds
        self._scorer: MerchantScorer | None = None
        self._last_batch = time.time()

    def _shard(self, value: MerchantInput) -> int:
        if isinstance(value, RuleRecord):
            return value.shard
        if isinstance(value, CardResult):
            return self._shard_of(value.item.value.merchant_id)
        return self._shard_of(value.value.merchant_id)

    def _opened(self, shard: int) -> MerchantScorer:
        if self._scorer is None:
            resumed = self._resumed
            scorer = self._open_scorer(shard, resumed)
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
            self._scorer = scorer
        return self._scorer

    def on_batch(self, values: list[MerchantInput]) -> tuple[list[MerchantOutput], bool]:
        """Apply rules and labels, score the transactions; hand on closed drift windows."""
        scorer = self._opened(self._shard(values[0]))
        rules = [v.record for v in values if isinstance(v, RuleRecord)]
        labels = [v.value for v in values if isinstance(v, Sourced)]
        txns = [v for v in values if isinstance(v, CardResult)]
        self._last_batch = time.time()
        out: list[MerchantOutput] = list(scorer.apply_rules(rules)) if rules else []
        scorer.apply_labels(labels)
        out += scorer.score(txns)
        partial = scorer.drift.close() if scorer.drift is not None else None
        if partial is not None:
            out.append(partial)
        return out, False

    def notify_at(self) -> datetime | None:
        """When to hand open drift windows on if nothing arrives (idle shard)."""
        drift = self._scorer.drift if self._scorer is not None else None
        if drift is None or not drift.has_open_windows:
            return None
        return datetime.fromtimestamp(self._last_batch + self._idle_seconds, tz=UTC)

    def on_notify(self) -> tuple[list[MerchantOutput], bool]:
        """The shard went idle: hand its open drift windows on."""
        drift = self._scorer.drift if self._scorer is not None else None
        partial = drift.close(idle=True) if drift is not None else None
        return ([partial] if partial is not None else []), False

    def on_eof(self) -> tuple[list[MerchantOutput], bool]:
        """End of the input: write the buffered sample rows."""
        if self._scorer is not None and self._scorer.samples is not None:
            self._scorer.samples.flush()
        return [], False

    def snapshot(self) -> MerchantSnapshot:
        """The store's sequence number and a copy of the open drift windows."""
        metrics.LAST_SNAPSHOT.set(time.time())
        if self._scorer is None:
            return self._resumed or MerchantSnapshot(0, None)
        scorer = self._scorer
        identity = scorer.store.db.identity
        metrics.STATE_BYTES.labels(store=f"merchants/{identity.shard}").set(
            scorer.store.db.approximate_disk_bytes())
        return MerchantSnapshot(scorer.store.checkpoint(), _copy(scorer.drift),
                                scorer.rules.snapshot() if scorer.rules is not None else None)


def _copy(drift: PartitionDrift | None) -> PartitionDrift | None:
    """A frozen copy for Bytewax, which pickles snapshots later."""
    import copy

    return copy.deepcopy(drift)
