"""Score one input partition's transactions: features, ONNX, decision, reasons, verdict bytes.

Plain Python over a :class:`~state.store.PartitionStore` and a
:class:`~flows.serving.ModelSource` (the hot-reloaded model, plus an optional
shadow), so it is tested without Kafka; the Bytewax step in :mod:`flows.score`
only feeds it batches.

Each transaction is scored with its features as of just before it, then applied
to state, in one RocksDB ``WriteBatch`` together with its encoded verdict and the
partition offset. A replayed offset (after a recovery) returns the stored verdict
bytes unchanged: same score, same decision, same model version, same times.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable, Sequence

import msgspec
import numpy as np

from flows import metrics
from flows.decode import Sourced
from flows.drift import PartitionDrift
from flows.kafka import SinkRecord
from flows.samples import SampleWriter
from flows.serving import ModelSource, Serving
from state.store import PartitionStore, Rendered
from state.verdicts import VerdictRecord
from topics.contracts import Label, Prediction, ReasonCode, Transaction

_encode = msgspec.json.Encoder().encode
#: Labels queued for their verdict per partition; beyond it the oldest are joined early.
MAX_UNJOINED = 100_000
log = logging.getLogger(__name__)


class PartitionScorer:
    """Everything between a decoded transaction and its verdict, for one input partition."""

    def __init__(
        self,
        store: PartitionStore,
        champion: ModelSource,
        shadow: ModelSource | None = None,
        clock: Callable[[], float] = time.time,
        drift: PartitionDrift | None = None,
        samples: SampleWriter | None = None,
    ) -> None:
        self.store = store
        self.champion = champion
        self.shadow = shadow
        self.clock = clock
        self.drift = drift
        self.samples = samples
        self._unjoined: list[tuple[int, int, Label]] = []  # heap by label time
        self._seq = itertools.count()
        self._event_time = -(1 << 62)  # newest transaction event time seen

    def apply_labels(self, labels: Sequence[Label]) -> None:
        """Apply labels to merchant state (idempotent by id); queue new ones for feedback."""
        if not labels:
            return
        for label in labels:
            metrics.LABELS.labels(is_fraud=str(label.is_fraud).lower()).inc()
        for label in self.store.apply_labels(labels):
            heapq.heappush(self._unjoined, (label.label_time, next(self._seq), label))

    def join_labels(self) -> None:
        """Feed back queued labels whose time this partition's transactions have reached.

        Waiting until then lets a label read ahead of its transaction (a backlog,
        or the same batch) still find the verdict; one still without a verdict is
        unknown. Beyond :data:`MAX_UNJOINED` queued labels the oldest are joined early.
        """
        due: list[Label] = []
        queue = self._unjoined
        while queue and (queue[0][0] <= self._event_time or len(queue) > MAX_UNJOINED):
            due.append(heapq.heappop(queue)[2])
        if not due:
            return
        live = self.champion.current.version
        for label, verdict in zip(due, self.store.verdicts(due), strict=True):
            truth = "fraud" if label.is_fraud else "legit"
            if verdict is None:
                metrics.LABELS_UNKNOWN.inc()
            else:
                metrics.LABEL_FEEDBACK.labels(verdict.model_version, verdict.decision, truth).inc()
            if self.drift is not None:
                self.drift.add_label(label.label_time, label.is_fraud, verdict, live)

    def score(self, batch: Sequence[Sourced[Transaction]]) -> list[SinkRecord]:
        """Verdicts for ``batch`` (one partition, offset order), fresh or re-emitted."""
        if not batch:
            return []
        self._event_time = max(self._event_time, max(s.value.event_time for s in batch))
        started = time.perf_counter()
        fresh: set[int] = set()
        live = self.champion.poll()  # one model per batch: swaps happen between batches
        shadow = self.shadow.poll() if self.shadow is not None else None

        def render(positions: Sequence[int], features: np.ndarray) -> Rendered:
            fresh.update(positions)
            return self._render([batch[i] for i in positions], features, live, shadow)

        values = self.store.process_and_render(
            [(item.offset, item.value) for item in batch], render
        )
        metrics.BATCH_SIZE.observe(len(batch))
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        verdicts = [
            SinkRecord(item.value.transaction_id.encode(), value)
            for item, value in zip(batch, values, strict=True)
            if value is not None
        ]
        if len(verdicts) < len(batch):
            skipped = len(batch) - len(verdicts)
            metrics.REPLAY_SKIPPED.inc(skipped)
            log.warning(
                "partition %d: %d replayed offsets have no stored verdict (dead-lettered "
                "the first time, or older than the store's output retention); skipped",
                self.store.partition, skipped,
            )
        replays = len(verdicts) - len(fresh)
        if replays:
            metrics.REPLAYED.inc(replays)
        return verdicts

    def _render(
        self,
        items: Sequence[Sourced[Transaction]],
        features: np.ndarray,
        live: Serving,
        shadow: Serving | None,
    ) -> Rendered:
        scores = live.model.predict(features)
        decisions = live.thresholds.decide(scores)
        flagged = np.flatnonzero(decisions != "approve")
        reasons: dict[int, list[ReasonCode]] = {}
        if flagged.size:
            explained = live.explainer.explain(features[flagged], scores[flagged])
            reasons = dict(zip(flagged.tolist(), explained, strict=True))
        shadow_scores = shadow_decisions = None
        if shadow is not None:
            shadow_scores = shadow.model.predict(features)
            shadow_decisions = shadow.thresholds.decide(shadow_scores)
            agree = int(np.count_nonzero(shadow_decisions == decisions))
            metrics.SHADOW_AGREEMENT.labels(agree="true").inc(agree)
            metrics.SHADOW_AGREEMENT.labels(agree="false").inc(len(items) - agree)
        self._observe(items, features, scores, decisions, live, shadow, shadow_scores,
                      shadow_decisions)
        now_ms = int(self.clock() * 1000)
        version, spec_version = live.version, live.model.feature_spec_version
        shadow_version = shadow.version if shadow is not None else None
        out, records = [], []
        for i, item in enumerate(items):
            txn = item.value
            decision = str(decisions[i])
            score = float(scores[i])
            prediction = Prediction(
                transaction_id=txn.transaction_id,
                card_id=txn.card_id,
                event_time=txn.event_time,
                score=score,
                decision=decision,  # type: ignore[arg-type]
                model_version=version,
                feature_spec_version=spec_version,
                reasons=reasons.get(i, []),
                ingest_time=item.ingest_ms,
                scored_time=now_ms,
            )
            shadow_decision = None
            if shadow_scores is not None and shadow_decisions is not None:
                shadow_decision = str(shadow_decisions[i])
                prediction.shadow_score = float(shadow_scores[i])
                prediction.shadow_decision = shadow_decision  # type: ignore[assignment]
                prediction.shadow_model_version = shadow_version
            out.append(_encode(prediction))
            records.append(VerdictRecord(
                txn.event_time, score, decision, version, shadow_decision, shadow_version
            ))
            metrics.LATENCY_SECONDS.observe(max(0, now_ms - item.ingest_ms) / 1000)
        for decision, count in zip(*np.unique(decisions, return_counts=True), strict=True):
            metrics.VERDICTS.labels(decision=str(decision), model_version=version).inc(int(count))
        metrics.TRANSACTIONS_IN.inc(len(items))
        return Rendered(out, records)

    def _observe(
        self, items: Sequence[Sourced[Transaction]], features: np.ndarray, scores: np.ndarray,
        decisions: np.ndarray, live: Serving, shadow: Serving | None,
        shadow_scores: np.ndarray | None, shadow_decisions: np.ndarray | None,
    ) -> None:
        """Feed the drift windows and the vector sample (cheap, vectorised)."""
        if self.drift is None and self.samples is None:
            return
        event_times = np.fromiter((s.value.event_time for s in items), np.int64, len(items))
        if self.drift is not None:
            pair = None
            if shadow is not None and shadow_scores is not None and shadow_decisions is not None:
                pair = (shadow.version, shadow_scores, shadow_decisions)
            self.drift.add_scored(
                live.model.metadata, event_times, features, scores, decisions, pair
            )
        if self.samples is not None:
            self.samples.offer(
                [s.offset for s in items], [s.value.transaction_id for s in items],
                event_times, features, scores, decisions, live.version,
            )
