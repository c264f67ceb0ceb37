"""Score one merchant shard's transactions: merchant features, ONNX, decision, reasons, verdict.

Plain Python over a :class:`~state.merchant_store.MerchantStore` and a
:class:`~flows.serving.ModelSource` (the hot-reloaded champion, plus an optional
shadow), so it is tested without Kafka; the Bytewax step in
:mod:`flows.merchant_stage` only feeds it batches.

New transactions of a batch are scored in one ONNX call, the analyst rules and
lists in force (a :class:`~rules.book.RuleBook`) are evaluated over the same rows,
and each verdict is committed in the same RocksDB ``WriteBatch`` as the merchant
state it was computed from. A transaction id already scored gets its stored verdict bytes
again: a producer re-delivery (counted in ``fraud_duplicate_transactions_total``)
or a replay after a crash (``fraud_replayed_verdicts_total``; its drift counts
and label joins, lost with the crashed process's memory, are redone).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import numpy as np

from flows import metrics
from flows.card_stage import CardResult, merge_partitions
from flows.decode import DeadLetterRecord, reject
from flows.drift import Judged, PartitionDrift
from flows.kafka import RawRecord, SinkRecord
from flows.samples import SampleWriter
from flows.serving import ModelSource, Serving
from rules.batch import RuleBatch
from rules.book import Message, Outcome, Refused, RuleBook
from state import merchant_store as ms
from state.merchant_store import LabelJoin, MerchantIn, MerchantStore
from state.records import Verdict
from state.spec import FEATURE_NAMES
from topics.contracts import Label, Prediction, ReasonCode, RuleHit
from topics.validation import Rejection

_encode = msgspec.json.Encoder().encode
log = logging.getLogger(__name__)


class _Scored(msgspec.Struct, gc=False):
    """The fields of a stored verdict that drift and label feedback need."""

    score: float
    decision: str
    model_version: str
    shadow_score: float | None = None
    shadow_decision: str | None = None
    shadow_model_version: str | None = None


_decode_scored = msgspec.json.Decoder(_Scored).decode


def judged(verdict: Verdict) -> Judged:
    """What a label is joined with, from a stored verdict's bytes."""
    s = _decode_scored(verdict.output)
    return Judged(s.decision, s.model_version, s.shadow_decision, s.shadow_model_version)


class MerchantScorer:
    """Everything between a card-stage result and its verdict, for one merchant shard."""

    def __init__(
        self,
        store: MerchantStore,
        champion: ModelSource,
        shadow: ModelSource | None = None,
        *,
        topic: str = "transactions",
        reference_currency: str = "EUR",
        clock: Callable[[], float] = time.time,
        drift: PartitionDrift | None = None,
        samples: SampleWriter | None = None,
        rules: RuleBook | None = None,
        shard: int = 0,
    ) -> None:
        self.store = store
        self.champion = champion
        self.shadow = shadow
        self.topic = topic
        self.reference_currency = reference_currency
        self.clock = clock
        self.drift = drift
        self.samples = samples
        self.rules = rules
        self.shard = shard
        if rules is not None:  # restored from a snapshot: its rules count from 0 here
            _zero_rule_series(rules)
        self._unknown_seen = store.unknown_labels
        self._scored: dict[str, Any] = {}

    # --- rules and lists ---------------------------------------------------------------
    def apply_rules(self, records: Sequence[RawRecord]) -> list[DeadLetterRecord]:
        """Apply ``rules``/``lists`` records (idempotent by key, version and offset).

        A refused record (does not compile, names an unknown feature, bad list value)
        leaves the previous version in force; shard 0 dead-letters it (every shard gets
        a copy of every record, one dead letter is enough).
        """
        if self.rules is None:
            return []
        out: list[DeadLetterRecord] = []
        for r in records:
            topic = "rules" if r.topic.endswith("rules") else "lists"
            result = self.rules.apply(Message(topic, r.key, r.value, r.offset))  # type: ignore[arg-type]
            if isinstance(result, Refused):
                if self.shard == 0:
                    log.warning("%s record %r refused: %s", topic, result.key, result.reason)
                    out.append(reject(r, Rejection(result.error_class, result.reason)))
            elif self.shard == 0 and result.change not in ("unchanged", "stale", "replayed"):
                log.info("%s %s %s (rule set %s)", topic, result.key, result.change,
                         self.rules.version)
        metrics.RULE_SET.info({"version": self.rules.version})
        _zero_rule_series(self.rules)
        return out

    # --- labels ------------------------------------------------------------------------
    def apply_labels(self, labels: Sequence[Label]) -> None:
        """Apply labels to merchant state (idempotent by id) and feed back their verdicts."""
        if not labels:
            return
        for label in labels:
            metrics.LABELS.labels(is_fraud=str(label.is_fraud).lower()).inc()
        self._feedback(self.store.apply_labels(labels))

    def _feedback(self, joins: Sequence[LabelJoin]) -> None:
        live = self.champion.current.version
        for join in joins:
            if join.verdict is None:
                continue  # waits for its transaction (or expires, counted unknown)
            truth = "fraud" if join.label.is_fraud else "legit"
            verdict = judged(join.verdict)
            metrics.LABEL_FEEDBACK.labels(verdict.model_version, verdict.decision, truth).inc()
            if self.drift is not None:
                self.drift.add_label(join.label.label_time, join.label.is_fraud, verdict, live)
        unknown = self.store.unknown_labels - self._unknown_seen
        if unknown:
            self._unknown_seen = self.store.unknown_labels
            metrics.LABELS_UNKNOWN.inc(unknown)
            if self.drift is not None:
                self.drift.add_unknown(unknown, live)

    # --- transactions ------------------------------------------------------------------
    def score(self, batch: Sequence[CardResult]) -> list[SinkRecord | DeadLetterRecord]:
        """Verdicts (fresh or re-emitted) and dead letters for ``batch`` (one shard)."""
        if not batch:
            return []
        started = time.perf_counter()
        ordered = merge_partitions([r.item for r in batch])
        by_item = {id(r.item): r for r in batch}
        results = [by_item[id(item)] for item in ordered]
        live = self.champion.poll()  # one model per batch: swaps happen between batches
        shadow = self.shadow.poll() if self.shadow is not None else None
        items = [MerchantIn(r.item.value, r.features, r.body, r.item.partition, r.item.offset,
                            r.row) for r in results]

        def render(positions: Sequence[int], matrix: np.ndarray) -> list[bytes]:
            return self._render([results[i] for i in positions], matrix, live, shadow)

        outs, joins = self.store.process(items, render)
        now = self.clock()
        out: list[SinkRecord | DeadLetterRecord] = []
        fresh: list[int] = []
        replays: list[int] = []
        for i, (r, o) in enumerate(zip(results, outs, strict=True)):
            key = r.item.value.transaction_id.encode()
            if o.kind == ms.CONFLICT:
                assert o.first is not None
                out.append(self._conflict(r, o.first))
                continue
            if o.kind == ms.MISSING:
                metrics.REPLAY_SKIPPED.inc()
                log.warning("transaction %r: no stored verdict and no card row (older than "
                            "the recent-row retention); skipped", r.item.value.transaction_id)
                continue
            assert o.output is not None
            out.append(SinkRecord(key, o.output, now))
            if o.kind == ms.FRESH:
                fresh.append(i)
            elif o.kind == ms.REPLAY:
                replays.append(i)
            else:
                metrics.DUPLICATES.labels(kind="redelivery").inc()
        if replays:
            metrics.REPLAYED.inc(len(replays))
            self._recount(results, outs, replays, live)
        if fresh:
            self._observe(results, outs, fresh)
        self._feedback(joins)
        metrics.BATCH_SIZE.observe(len(batch))
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        return out

    def _conflict(self, r: CardResult, first: Verdict) -> DeadLetterRecord:
        from flows.card_stage import conflict_letter

        return conflict_letter(r.item, self.topic, first.partition, first.offset)

    def _evaluate_rules(self, results: Sequence[CardResult], features: np.ndarray,
                        scores: np.ndarray, decisions: np.ndarray) -> Outcome | None:
        """The rules in force over the batch (None when the book holds none)."""
        book = self.rules
        if book is None or not book.has_rules:
            return None
        batch = RuleBatch.from_transactions(
            [r.item.value for r in results], features, FEATURE_NAMES, scores, decisions,
            amount_reference=np.fromiter((r.features.amount for r in results), np.float64,
                                         len(results)),
        )
        outcome = book.evaluate(batch)
        for (rule_id, mode), hits in outcome.counts.items():
            if hits:
                metrics.RULE_HITS.labels(rule_id=rule_id, mode=mode).inc(hits)
        flagged_by_model = decisions != "approve"
        for i, hits_i in enumerate(outcome.hits):
            for h in hits_i:
                metrics.RULE_OVERLAP.labels(
                    rule_id=h.rule_id, mode=h.mode,
                    model=str(bool(flagged_by_model[i])).lower()).inc()
        for rule_id, n in outcome.errors.items():
            metrics.RULE_ERRORS.labels(rule_id=rule_id).inc(n)
        return outcome

    def _render(
        self, results: Sequence[CardResult], features: np.ndarray, live: Serving,
        shadow: Serving | None,
    ) -> list[bytes]:
        scores = live.model.predict(features)
        model_decisions = live.thresholds.decide(scores)
        outcome = self._evaluate_rules(results, features, scores, model_decisions)
        decisions = outcome.decision if outcome is not None else model_decisions
        flagged = np.flatnonzero(model_decisions != "approve")
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
            metrics.SHADOW_AGREEMENT.labels(agree="false").inc(len(results) - agree)
        self._scored = {"live": live, "shadow": shadow, "scores": scores,
                        "decisions": decisions, "shadow_scores": shadow_scores,
                        "shadow_decisions": shadow_decisions, "outcome": outcome,
                        "model_decisions": model_decisions}
        now = self.clock()
        now_ms = int(now * 1000)
        version, spec_version = live.version, live.model.feature_spec_version
        shadow_version = shadow.version if shadow is not None else None
        currency = self.reference_currency
        out = []
        for i, r in enumerate(results):
            item = r.item
            txn = item.value
            prediction = Prediction(
                transaction_id=txn.transaction_id,
                card_id=txn.card_id,
                event_time=txn.event_time,
                score=float(scores[i]),
                decision=str(decisions[i]),  # type: ignore[arg-type]
                model_version=version,
                feature_spec_version=spec_version,
                reasons=reasons.get(i, []),
                ingest_time=item.ingest_ms,
                scored_time=now_ms,
                event_time_clamped=item.event_ms != txn.event_time,
                amount_reference=round(r.features.amount, 6),
                reference_currency=currency,
            )
            if outcome is not None:
                if outcome.hits[i]:
                    prediction.rule_hits = [RuleHit(
                        rule_id=h.rule_id, version=h.version, action=h.action, mode=h.mode,
                        text=h.text) for h in outcome.hits[i]]
                    prediction.reasons = outcome.reasons(i) + prediction.reasons
                if decisions[i] != model_decisions[i]:
                    prediction.model_decision = str(model_decisions[i])  # type: ignore[assignment]
                prediction.rule_set_version = outcome.ruleset_version
            if shadow_scores is not None and shadow_decisions is not None:
                prediction.shadow_score = float(shadow_scores[i])
                prediction.shadow_decision = str(shadow_decisions[i])  # type: ignore[assignment]
                prediction.shadow_model_version = shadow_version
            out.append(_encode(prediction))
            metrics.LATENCY_SECONDS.observe(max(0, now_ms - item.ingest_ms) / 1000)
            if item.offset % 8 == 0 and item.fetched:  # stage timings, sampled
                stage = metrics.STAGE_SECONDS.labels
                stage(stage="broker").observe(max(0.0, item.fetched - item.ingest_ms / 1000))
                stage(stage="card").observe(max(0.0, r.carded - item.fetched))
                stage(stage="merchant").observe(max(0.0, now - r.carded))
        for decision, count in zip(*np.unique(decisions, return_counts=True), strict=True):
            metrics.VERDICTS.labels(decision=str(decision), model_version=version).inc(int(count))
        metrics.TRANSACTIONS_IN.inc(len(results))
        return out

    def _observe(self, results: Sequence[CardResult], outs: Sequence[ms.MerchantOut],
                 fresh: list[int]) -> None:
        """Feed the drift windows and the vector sample with the batch's new verdicts."""
        if self.drift is None and self.samples is None:
            return
        s = self._scored
        live: Serving = s["live"]
        features = np.stack([outs[i].row for i in fresh])  # type: ignore[misc]
        event_times = np.fromiter((results[i].features.event_time for i in fresh), np.int64,
                                  len(fresh))
        if self.drift is not None:
            pair = None
            if s["shadow"] is not None and s["shadow_scores"] is not None:
                pair = (s["shadow"].version, s["shadow_scores"], s["shadow_decisions"])
            inputs = np.fromiter((results[i].item.partition for i in fresh), np.int64,
                                 len(fresh))
            self.drift.add_scored(live.model.metadata, event_times, features, s["scores"],
                                  s["decisions"], pair, inputs)
            outcome = s["outcome"]
            if outcome is not None and any(outcome.hits):
                self.drift.add_rule_hits(
                    live.version, event_times,
                    [[(h.rule_id, h.mode) for h in row] for row in outcome.hits],
                    s["model_decisions"] != "approve")
        if self.samples is not None:
            self.samples.offer(
                [outs[i].first.seq for i in fresh],  # type: ignore[union-attr]
                [results[i].item.partition for i in fresh],
                [results[i].item.offset for i in fresh],
                [results[i].item.value.transaction_id for i in fresh],
                event_times, features, s["scores"], s["decisions"], live.version,
            )

    def _recount(self, results: Sequence[CardResult], outs: Sequence[ms.MerchantOut],
                 replays: list[int], live: Serving) -> None:
        """Count replayed verdicts in drift again: the crashed process's counts were lost."""
        if self.drift is None:
            return
        metadata = live.model.metadata
        rows = [i for i in replays if outs[i].row is not None]
        scored = [_decode_scored(outs[i].output or b"{}") for i in rows]
        keep = [j for j, s in enumerate(scored) if s.model_version == live.version]
        if not keep:
            return  # scored by a model this process no longer serves: not counted again
        idx = [rows[j] for j in keep]
        features = np.stack([outs[i].row for i in idx])  # type: ignore[misc]
        event_times = np.fromiter((results[i].features.event_time for i in idx), np.int64,
                                  len(idx))
        scores = np.array([scored[j].score for j in keep], dtype=np.float32)
        decisions = np.array([scored[j].decision for j in keep], dtype="<U7")
        pair = None
        shadow_version = scored[keep[0]].shadow_model_version
        if shadow_version and all(scored[j].shadow_score is not None for j in keep):
            pair = (shadow_version,
                    np.array([scored[j].shadow_score for j in keep], dtype=np.float32),
                    np.array([scored[j].shadow_decision for j in keep], dtype="<U7"))
        inputs = np.fromiter((results[i].item.partition for i in idx), np.int64, len(idx))
        self.drift.add_scored(metadata, event_times, features, scores, decisions, pair, inputs)


def _zero_rule_series(book: RuleBook) -> None:
    """Export every enabled rule's hit, overlap and error series at 0 until it first counts.

    A counter series that appears only on its first hit breaks ``rate()`` over it and
    hides quiet rules from the dashboards (Prometheus naming/instrumentation practice:
    initialise label sets you know of).
    """
    for c in book.compiled():
        rule = c.rule
        metrics.RULE_HITS.labels(rule_id=rule.id, mode=rule.mode)
        for model in ("true", "false"):
            metrics.RULE_OVERLAP.labels(rule_id=rule.id, mode=rule.mode, model=model)
        metrics.RULE_ERRORS.labels(rule_id=rule.id)
