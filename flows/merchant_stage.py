"""The merchant stage's Bytewax step: one :class:`~flows.scorer.MerchantScorer` per shard.

Fed every transaction (from the card stage) and every label of the shard's
merchants. Its recovery snapshot holds the store's sequence number and the
open drift windows, so a crash loses no drift count: the windows resume from
the snapshot, and verdicts stored after it are counted again as they are replayed
(see :class:`~state.records.Incarnation`).

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
from flows.kafka import SinkRecord
from flows.scorer import MerchantScorer
from state.errors import StaleStateError
from topics.contracts import Label

MerchantOutput = SinkRecord | DeadLetterRecord | DriftPartial


class MerchantSnapshot(NamedTuple):
    """What Bytewax keeps for a merchant shard between snapshots."""

    seq: int
    drift: PartitionDrift | None


class MerchantLogic(StatefulBatchLogic[CardResult | Sourced[Label], MerchantOutput,
                                       MerchantSnapshot]):
    """Bytewax adapter of one merchant shard (its scorer is opened at the first batch)."""

    def __init__(self, open_scorer: Callable[[str, PartitionDrift | None], MerchantScorer],
                 resumed: MerchantSnapshot | None, idle_seconds: float) -> None:
        self._open_scorer = open_scorer
        self._resumed = resumed
        self._idle_seconds = idle_seconds
        self._scorer: MerchantScorer | None = None
        self._last_batch = time.time()

    def _opened(self, merchant_id: str) -> MerchantScorer:
        if self._scorer is None:
            resumed = self._resumed
            scorer = self._open_scorer(merchant_id,
                                       resumed.drift if resumed is not None else None)
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

    def on_batch(self, values: list[CardResult | Sourced[Label]]
                 ) -> tuple[list[MerchantOutput], bool]:
        """Apply the labels, score the transactions; hand on closed drift windows."""
        first = values[0]
        scorer = self._opened(first.value.merchant_id if isinstance(first, Sourced)
                              else first.item.value.merchant_id)
        labels = [v.value for v in values if isinstance(v, Sourced)]
        txns = [v for v in values if isinstance(v, CardResult)]
        self._last_batch = time.time()
        scorer.apply_labels(labels)
        out: list[MerchantOutput] = list(scorer.score(txns))
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
        return MerchantSnapshot(scorer.store.checkpoint(), _copy(scorer.drift))


def _copy(drift: PartitionDrift | None) -> PartitionDrift | None:
    """A frozen copy for Bytewax, which pickles snapshots later."""
    import copy

    return copy.deepcopy(drift)
