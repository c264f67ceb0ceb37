"""One merchant shard between the card stage and ``predictions``: store, scoring room, drift.

Plain Python over a :class:`~state.merchant_store.MerchantStore`, the scoring room
(:mod:`scoring`) and the hot-reloaded models (:class:`~flows.serving.ModelSource`),
so it is tested without Kafka; the Bytewax step in :mod:`flows.merchant_stage` only
feeds it batches in event-time order.

New transactions of a batch are scored in one ONNX call per model, the analyst
rules and lists in force are evaluated over the same rows, and each verdict is
committed in the same RocksDB ``WriteBatch`` as the merchant state it was computed
from. A transaction id already scored gets its stored verdict bytes again: a
producer re-delivery (counted in ``fraud_duplicate_transactions_total``) or a
replay after a crash (``fraud_replayed_verdicts_total``; its drift counts and
label joins, lost with the crashed process's memory, are redone). Metrics are
observed once per batch.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import numpy as np

from drift.samples import SampleWriter
from drift.windows import Judged, PartitionDrift
from flows import metrics
from flows.card_stage import conflict_letter
from flows.decode import DeadLetterRecord, reject
from flows.items import CardRows, SinkBatch
from flows.kafka import RawRecord
from flows.serving import ModelSource
from rules.book import Message, Outcome, Refused, RuleBook
from scoring.decide import Decided, decide
from scoring.render import gists, render
from scoring.serving import Serving
from state import merchant_store as ms
from state.merchant_store import LabelJoin, LabelSource, MerchantBatch, MerchantStore
from state.records import Verdict, VerdictGist
from topics.contracts import Label
from topics.deadletter import masked_text
from topics.validation import Rejection
from tracing.carry import timelines

log = logging.getLogger(__name__)


#: Verdict kinds by ``state.merchant_store`` outcome code (a span attribute of traced ones).
_KINDS = np.empty(5, dtype=object)
_KINDS[[ms.FRESH, ms.REPEAT, ms.REPLAY, ms.CONFLICT, ms.MISSING]] = [
    "fresh", "repeat", "replay", "conflict", "missing"]

#: The fields of a stored verdict that drift and label feedback need.
_decode_scored = msgspec.json.Decoder(VerdictGist).decode


def judged(verdict: Verdict) -> Judged:
    """What a label is joined with, from a stored verdict's bytes."""
    s = _decode_scored(verdict.output)
    return Judged(s.decision, s.model_version, s.shadow_decision, s.shadow_model_version)


class MerchantScorer:
    """Everything between card-stage results and their verdicts, for one merchant shard."""

    def __init__(
        self,
        store: MerchantStore,
        champion: ModelSource,
        shadow: ModelSource | None = None,
        *,
        topic: str = "transactions",
        reference_currency: str = "EUR",
        rate_table: str | None = None,
        clock: Callable[[], float] = time.time,
        drift: PartitionDrift | None = None,
        samples: SampleWriter | None = None,
        rules: RuleBook | None = None,
        shard: int = 0,
        reports_lists: bool | None = None,
    ) -> None:
        self.store = store
        self.champion = champion
        self.shadow = shadow
        self.topic = topic
        self.reference_currency = reference_currency
        self.rate_table = rate_table
        self.clock = clock
        self.drift = drift
        self.samples = samples
        self.rules = rules
        self.shard = shard
        #: Whether this shard reports the ``lists`` records its book applies (see
        #: :meth:`apply_rules`); None: shard 0 alone, as for rules (a book with its own lists).
        self.reports_lists = shard == 0 if reports_lists is None else reports_lists
        if rules is not None:  # restored from a snapshot: its rules count from 0 here
            _zero_rule_series(rules)
            _zero_rule_change_series()
        self._unknown_seen = store.unknown_labels
        self._mismatched_seen = store.mismatched_labels
        self._decided: Decided | None = None

    # --- rules and lists ---------------------------------------------------------------
    def apply_rules(self, records: Sequence[RawRecord]) -> list[DeadLetterRecord]:
        """Apply ``rules``/``lists`` records (idempotent by key, version and offset).

        A refused record (unsigned or not signed by a trusted analyst, a tombstone, does
        not compile, names an unknown feature, bad list value) leaves the previous version
        in force; it is dead-lettered once and counted in
        ``fraud_rule_messages_refused_total``. A ``rules`` record is applied by every
        shard's book (every shard gets a copy) and reported by shard 0; a ``lists`` record
        is applied once per process, by the process's list table (:mod:`rules.list_table`)
        for the first shard that hands it in, the others see it ``replayed``: that shard
        reports it when :attr:`reports_lists` (the flow: in process 0, so once per
        cluster). A signed change that loosens decisions waits for a second analyst
        (``pending``, counted in ``fraud_rule_changes_pending``) and changes no verdict
        (:mod:`rules.approval`).
        """
        if self.rules is None:
            return []
        out: list[DeadLetterRecord] = []
        lists = False
        for r in records:
            topic = "rules" if r.topic.endswith("rules") else "lists"
            lists |= topic == "lists"
            result = self.rules.apply(Message(topic, r.key, r.value, r.offset))  # type: ignore[arg-type]
            reports = self.shard == 0 if topic == "rules" else self.reports_lists
            if isinstance(result, Refused):
                if reports:
                    metrics.RULE_REFUSED.labels(topic=topic, error_class=result.error_class).inc()
                    log.warning("%s record %r refused: %s", topic,  # keys may be card data
                                masked_text(str(result.key)), masked_text(result.reason))
                    out.append(reject(r, Rejection(result.error_class, result.reason)))
            elif result.change == "pending":
                if reports:
                    metrics.RULE_CHANGES.labels(topic=topic, outcome="pending").inc()
                    waiting = self.rules.pending.get((topic, result.key))
                    log.warning("%s change of %s signed by %s waits for a second analyst (%s)",
                                topic, result.key if topic == "rules"
                                else result.key.partition("/")[0],
                                waiting.author if waiting else "?",
                                waiting.reason if waiting else "loosens decisions")
            elif reports and result.change not in ("unchanged", "stale", "replayed"):
                metrics.RULE_CHANGES.labels(topic=topic, outcome="applied").inc()
                log.info("%s %s %s (rule set %s)", topic, result.key if topic == "rules" else
                         f"entry of list {result.key.partition('/')[0]}",  # no card id logged
                         result.change, self.rules.version)
        metrics.RULE_SET.info({"version": self.rules.version})
        pending = self.rules.pending
        if self.shard == 0:
            metrics.RULE_PENDING.labels(topic="rules").set(
                sum(1 for t, _ in pending if t == "rules"))
        if self.reports_lists:
            metrics.RULE_PENDING.labels(topic="lists").set(
                sum(1 for t, _ in pending if t == "lists"))
        if lists:
            metrics.LIST_ENTRIES.set(self.rules.lists.size())
        _zero_rule_series(self.rules)
        return out

    # --- labels ------------------------------------------------------------------------
    def apply_labels(self, labels: Sequence[Label],
                     sources: Sequence[LabelSource] | None = None) -> None:
        """Apply labels to merchant state and feed back their verdicts (:mod:`state.labels`).

        ``sources[i]``: where ``labels[i]`` was read (for its dead letter if it expires).
        """
        if not labels:
            return
        fraud = sum(1 for label in labels if label.is_fraud)
        if fraud:
            metrics.LABELS.labels(is_fraud="true").inc(fraud)
        if len(labels) - fraud:
            metrics.LABELS.labels(is_fraud="false").inc(len(labels) - fraud)
        self._feedback(self.store.apply_labels(labels, sources))

    def _feedback(self, joins: Sequence[LabelJoin]) -> None:
        """Count label feedback; a correction takes back the truth it replaces (at its time)."""
        live = self.champion.current.version
        for join in joins:
            truth = "fraud" if join.label.is_fraud else "legit"
            verdict = judged(join.verdict)
            if join.replaces is not None:
                metrics.LABEL_FEEDBACK_RETRACTED.labels(
                    verdict.model_version, verdict.decision,
                    "fraud" if join.replaces else "legit").inc()
                if self.drift is not None:
                    self.drift.retract_label(join.replaces_time, join.replaces, verdict)
            metrics.LABEL_FEEDBACK.labels(verdict.model_version, verdict.decision, truth).inc()
            if self.drift is not None:
                self.drift.add_label(join.label.label_time, join.label.is_fraud, verdict, live)
        mismatched = self.store.mismatched_labels - self._mismatched_seen
        if mismatched:
            self._mismatched_seen = self.store.mismatched_labels
            metrics.LABELS_MERCHANT_MISMATCH.inc(mismatched)
        unknown = self.store.unknown_labels - self._unknown_seen
        if unknown:
            self._unknown_seen = self.store.unknown_labels
            metrics.LABELS_UNKNOWN.inc(unknown)
            if self.drift is not None:
                self.drift.add_unknown(unknown, live)

    # --- transactions ------------------------------------------------------------------
    def score(self, rows: CardRows) -> tuple[SinkBatch | None, list[DeadLetterRecord]]:
        """Verdicts (fresh or re-emitted) and dead letters for ``rows`` (event-time order).

        At most the store's ``commit_max`` rows at a time (a backlog's release can be
        long): each slice is decided and committed as one store batch.
        """
        step = self.store.db.options.commit_max
        if len(rows) <= step:
            return self._score(rows)
        verdicts: list[SinkBatch] = []
        dead: list[DeadLetterRecord] = []
        for a in range(0, len(rows), step):
            out, letters = self._score(rows.slice(a, min(a + step, len(rows))))
            dead += letters
            if out is not None:
                verdicts.append(out)
        return SinkBatch.concat(verdicts), dead

    def _score(self, rows: CardRows) -> tuple[SinkBatch | None, list[DeadLetterRecord]]:
        if not len(rows):
            return None, []
        started = time.perf_counter()
        txns = rows.txns
        values = txns.values
        # The card stage asks for a new model (ModelSource.poll, see flows.score): it runs
        # before this stage in a worker's step, so every merchant shard of a step, and every
        # batch, is scored by one model, and each partition switches once, in order.
        live = self.champion.current
        shadow = self.shadow.current if self.shadow is not None else None
        batch = MerchantBatch([t.transaction_id for t in values], [t.merchant_id for t in values],
                              rows.body, txns.partition, txns.offset, rows.inputs, rows.rows,
                              rows.has_row)
        self._decided = None

        def score_rows(positions: np.ndarray, matrix: np.ndarray) -> ms.Rendered:
            picked = [values[i] for i in positions.tolist()]
            decided = decide(matrix, picked, rows.amount[positions], live, shadow, self.rules)
            self._decided = decided
            return ms.Rendered(render(decided, picked, txns.ingest_ms[positions],
                                      txns.clamped[positions], rows.amount[positions],
                                      self.reference_currency, int(self.clock() * 1000),
                                      self.rate_table), gists(decided))

        outcome, joins = self.store.process(batch, score_rows)
        made = self.clock()
        kind = outcome.kind
        dead = [conflict_letter(values[i], int(txns.partition[i]), int(txns.offset[i]),
                                int(txns.ingest_ms[i]), self.topic,
                                outcome.first[i].partition,  # type: ignore[union-attr]
                                outcome.first[i].offset)  # type: ignore[union-attr]
                for i in np.flatnonzero(kind == ms.CONFLICT).tolist()]
        missing = np.flatnonzero(kind == ms.MISSING)
        if len(missing):
            metrics.REPLAY_SKIPPED.inc(len(missing))
            log.warning("%d transactions without a stored verdict or a card row (older than "
                        "the recent-row retention), e.g. %r; skipped", len(missing),
                        values[int(missing[0])].transaction_id)
        sent = np.flatnonzero((kind != ms.CONFLICT) & (kind != ms.MISSING)).tolist()
        out = SinkBatch([(values[i].transaction_id.encode(), outcome.output[i])  # type: ignore[misc]
                         for i in sent], made) if sent else None
        if out is not None and txns.traces:  # traced rows (tracing on): their steps' times
            out = out._replace(traces=timelines(
                txns.traces, sent, txns.partition, txns.offset, txns.fetched, rows.carded,
                made - (time.perf_counter() - started), made, _KINDS[kind]))
        repeats = int(np.count_nonzero(kind == ms.REPEAT))
        if repeats:
            metrics.DUPLICATES.labels(kind="redelivery").inc(repeats)
        replays = np.flatnonzero(kind == ms.REPLAY)
        if len(replays):
            metrics.REPLAYED.inc(len(replays))
            self._recount(rows, outcome, replays, live)
        fresh = np.flatnonzero(kind == ms.FRESH)
        if len(fresh) and self._decided is not None:
            self._observe(rows, outcome, fresh, self._decided, made)
        self._feedback(joins)
        metrics.BATCH_SIZE.observe(len(rows))
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        return out, dead

    def _observe(self, rows: CardRows, outcome: ms.MerchantOutcome, fresh: np.ndarray,
                 decided: Decided, made: float) -> None:
        """Metrics, drift windows and the vector sample of the batch's new verdicts."""
        txns = rows.txns
        live = decided.champion
        decisions = decided.decision
        for decision, count in Counter(decisions.tolist()).items():
            metrics.VERDICTS.labels(decision=decision, model_version=live.version).inc(count)
        metrics.TRANSACTIONS_IN.inc(len(fresh))
        ingest = txns.ingest_ms[fresh]
        metrics.observe_many(metrics.LATENCY_SECONDS, np.maximum(0.0, made - ingest / 1000))
        sampled = fresh[txns.offset[fresh] % 8 == 0]  # stage timings, one in eight
        fetched = txns.fetched[sampled]
        timed = sampled[fetched > 0]
        if len(timed):
            stage = metrics.STAGE_SECONDS.labels
            fetched = txns.fetched[timed]
            metrics.observe_many(stage(stage="broker"),
                                 np.maximum(0.0, fetched - txns.ingest_ms[timed] / 1000))
            metrics.observe_many(stage(stage="card"),
                                 np.maximum(0.0, rows.carded[timed] - fetched))
            metrics.observe_many(stage(stage="merchant"),
                                 np.maximum(0.0, made - rows.carded[timed]))
        if decided.shadow is not None and decided.shadow_decision is not None:
            agree = int(np.count_nonzero(decided.shadow_decision == decisions))
            metrics.SHADOW_AGREEMENT.labels(agree="true").inc(agree)
            metrics.SHADOW_AGREEMENT.labels(agree="false").inc(len(decisions) - agree)
        if decided.rules is not None:
            self._rule_metrics(decided)
            self._rule_costs(decided.rules)
        if self.drift is None and self.samples is None:
            return
        features = outcome.rows[fresh]
        event_times = txns.event_ms[fresh]
        if self.drift is not None:
            pair = None
            if (decided.shadow is not None and decided.shadow_scores is not None
                    and decided.shadow_decision is not None):
                pair = (decided.shadow.version, decided.shadow_scores, decided.shadow_decision)
            self.drift.add_scored(live.model.metadata, event_times, features, decided.scores,
                                  decisions, pair, txns.partition[fresh].astype(np.int64))
            outcome_rules = decided.rules
            if outcome_rules is not None and any(outcome_rules.hits):
                self.drift.add_rule_hits(
                    live.version, event_times,
                    [[(h.rule_id, h.mode) for h in row] for row in outcome_rules.hits],
                    decided.model_decision != "approve")
        if self.samples is not None:
            self.samples.offer(
                [outcome.first[i].seq for i in fresh.tolist()],
                txns.partition[fresh], txns.offset[fresh],
                [txns.values[i].transaction_id for i in fresh.tolist()],
                event_times, features, decided.scores, decisions, live.version,
            )

    @staticmethod
    def _rule_metrics(decided: Decided) -> None:
        outcome = decided.rules
        assert outcome is not None
        for (rule_id, mode), hits in outcome.counts.items():
            if hits:
                metrics.RULE_HITS.labels(rule_id=rule_id, mode=mode).inc(hits)
        flagged_by_model = (decided.model_decision != "approve").tolist()
        for i, hits_i in enumerate(outcome.hits):
            for h in hits_i:
                metrics.RULE_OVERLAP.labels(
                    rule_id=h.rule_id, mode=h.mode,
                    model=str(bool(flagged_by_model[i])).lower()).inc()
        for rule_id, n in outcome.errors.items():
            metrics.RULE_ERRORS.labels(rule_id=rule_id).inc(n)
        changed = decided.model_decision != decided.decision
        if changed.any():
            pairs = zip(decided.model_decision[changed].tolist(),
                        decided.decision[changed].tolist(), strict=True)
            for (before, after), n in Counter(pairs).items():
                metrics.RULE_DECISION_CHANGES.labels(model_decision=before, decision=after).inc(n)

    def _rule_costs(self, outcome: Outcome) -> None:
        """Count and log the rules the cost guard disabled, and the shadow rules it skipped.

        A disabled rule took no part in this batch and is out of force from now on: the
        batch's verdicts already carry the rule set version without it (rules.book).
        """
        for gone in outcome.disabled:
            metrics.RULES_DISABLED.labels(rule_id=gone.rule_id).inc()
            log.warning("merchant shard %d: %s; out of force (rule set now %s) until a new "
                        "version is published", self.shard, gone.reason, outcome.ruleset_version)
        if outcome.disabled:
            metrics.RULE_SET.info({"version": outcome.ruleset_version})
        for rule_id in outcome.shadow_skipped:
            metrics.SHADOW_RULES_SKIPPED.labels(rule_id=rule_id).inc()

    def _recount(self, rows: CardRows, outcome: ms.MerchantOutcome, replays: np.ndarray,
                 live: Serving) -> None:
        """Count replayed verdicts in drift again: the crashed process's counts were lost."""
        if self.drift is None:
            return
        metadata = live.model.metadata
        idx = [i for i in replays.tolist() if outcome.has_row[i]]
        scored = [_decode_scored(outcome.output[i] or b"{}") for i in idx]
        keep = [j for j, s in enumerate(scored) if s.model_version == live.version]
        if not keep:
            return  # scored by a model this process no longer serves: not counted again
        picked = np.asarray([idx[j] for j in keep], dtype=np.int64)
        scores = np.array([scored[j].score for j in keep], dtype=np.float32)
        decisions = np.array([scored[j].decision for j in keep], dtype="<U7")
        pair: Any = None
        shadow_version = scored[keep[0]].shadow_model_version
        if shadow_version and all(scored[j].shadow_score is not None for j in keep):
            pair = (shadow_version,
                    np.array([scored[j].shadow_score for j in keep], dtype=np.float32),
                    np.array([scored[j].shadow_decision for j in keep], dtype="<U7"))
        self.drift.add_scored(metadata, rows.txns.event_ms[picked], outcome.rows[picked],
                              scores, decisions, pair,
                              rows.txns.partition[picked].astype(np.int64))


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
        metrics.RULES_DISABLED.labels(rule_id=rule.id)
        if rule.mode == "shadow":
            metrics.SHADOW_RULES_SKIPPED.labels(rule_id=rule.id)


_DECISIONS = ("approve", "review", "decline")


def _zero_rule_change_series() -> None:
    """Export the rule-change and decision-change series at 0 (bounded label sets)."""
    for topic in ("rules", "lists"):
        metrics.RULE_PENDING.labels(topic=topic)
        for outcome in ("applied", "pending"):
            metrics.RULE_CHANGES.labels(topic=topic, outcome=outcome)
        metrics.RULE_REFUSED.labels(topic=topic, error_class=f"{topic[:-1]}_unauthenticated")
    for before in _DECISIONS:
        for after in _DECISIONS:
            if before != after:
                metrics.RULE_DECISION_CHANGES.labels(model_decision=before, decision=after)
