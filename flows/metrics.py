"""Prometheus metrics of the scoring flow, declared once. Labels are bounded: never ids.

Served by :func:`serve` on ``FRAUD_METRICS_PORT`` (the next free port for a second
process on the same host). Consumer lag
is Bytewax's own ``bytewax_kafka_consumer_lag`` gauge (per topic partition),
fed from librdkafka statistics.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import Counter, Gauge, Histogram, Info

from topics.contracts import DriftSnapshot

if TYPE_CHECKING:
    from state.db import StateDB

log = logging.getLogger(__name__)

TRANSACTIONS_IN = Counter(
    "fraud_transactions_in_total",
    "Transactions scored for the first time (replays are fraud_replayed_verdicts_total).",
)
VERDICTS = Counter(
    "fraud_verdicts_total", "Verdicts produced, by decision and model version.",
    ["decision", "model_version"],
)
REPLAYED = Counter(
    "fraud_replayed_verdicts_total",
    "Verdicts re-emitted from the state store for transactions replayed after a recovery.",
)
REPLAY_SKIPPED = Counter(
    "fraud_replay_skipped_total",
    "Replayed transactions with neither a stored verdict nor a kept card row (older than the "
    "recent-row retention); not scored again.",
)
DEAD_LETTERS = Counter(
    "fraud_dead_letters_total", "Messages sent to the dead-letter topic, by error class.",
    ["error_class"],
)
LABELS = Counter(
    "fraud_labels_total", "Label events received (repeats are ignored by the store).",
    ["is_fraud"],
)
MISKEYED = Counter(
    "fraud_miskeyed_transactions_total",
    "Transactions not on their card's murmur2 partition (no key, another key or another "
    "partitioner), by what was done: routed to the card's state, or refused (dead letter).",
    ["action"],
)
PANS_TOKENISED = Counter(
    "fraud_pans_tokenised_total",
    "Card numbers (PANs) found in clear in a decoded record and replaced by their keyed "
    "token (FRAUD_PAN_KEY_FILE), by field: card_id, device_id, customer_id. Without a key "
    "such records are dead letters (pan_in_clear) instead.",
    ["field"],
)
UNRATED = Counter(
    "fraud_amount_unrated_total",
    "Transactions decoded whose amount no rate converts to the reference currency (no "
    "billing amount in it or a rated currency): scored with neutral amount features, "
    "verdict flagged amount_unrated; by ISO 4217 transaction currency.",
    ["currency"],
)
CLAMPED = Counter(
    "fraud_event_time_clamped_total",
    "Records whose event (or label) time ran ahead of the Kafka record timestamp by more "
    "than FRAUD_MAX_SKEW_SECONDS and was clamped to it.",
    ["topic"],
)
DUPLICATES = Counter(
    "fraud_duplicate_transactions_total",
    "Transaction ids seen again: a re-delivery (same body: the stored verdict is re-emitted) "
    "or a conflict (another body: dead-lettered).",
    ["kind"],
)
BATCH_SIZE = Histogram(
    "fraud_scoring_batch_size", "Transactions per scoring batch.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
)
BATCH_SECONDS = Histogram(
    "fraud_scoring_batch_seconds", "Time to compute features, score and decide one batch.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
STAGE_SECONDS = Histogram(
    "fraud_stage_seconds",
    "Where a verdict's time goes (one transaction in 8, and the last record of each sink "
    "batch): broker = Kafka timestamp to fetched by the source, card = fetched to card "
    "stage done, merchant = card stage done to verdict made (features, model, rules), "
    "sink = made to handed to the producer, ack = handed to acknowledged by the broker.",
    ["stage"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
LATENCY_SECONDS = Histogram(
    "fraud_end_to_end_latency_seconds",
    "From the transaction's Kafka timestamp (ingest) to its verdict being scored.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
MODEL_INFO = Info("fraud_model", "The serving model.")
MODEL_RELOADS = Counter(
    "fraud_model_reloads_total", "Model files found changed: loaded, or refused (old one kept).",
    ["role", "outcome"],
)
SHADOW_AGREEMENT = Counter(
    "fraud_shadow_decisions_total", "Verdicts also scored by the shadow model, by agreement.",
    ["agree"],
)
LABEL_FEEDBACK = Counter(
    "fraud_label_feedback_total",
    "Labels joined with the verdict they judge, by model version, decision and truth.",
    ["model_version", "decision", "truth"],
)
LABEL_FEEDBACK_RETRACTED = Counter(
    "fraud_label_feedback_retracted_total",
    "Label feedback taken back by a later label of the same transaction (a correction), "
    "by the replaced label's truth: feedback_total - retracted_total is the latest labels'.",
    ["model_version", "decision", "truth"],
)
LABELS_UNKNOWN = Counter(
    "fraud_labels_unknown_total",
    "Labels whose transaction has no stored verdict when they are applied (not scored here "
    "yet, never, or past FRAUD_VERDICT_HORIZON_DAYS): they wait for it and change nothing.",
)
LABELS_WAITING = Gauge(
    "fraud_labels_waiting",
    "Labels waiting for their transaction in a merchant shard.",
    ["shard"],
)
LABELS_EXPIRED = Counter(
    "fraud_labels_expired_total",
    "Labels whose transaction never came within FRAUD_VERDICT_HORIZON_DAYS: dead-lettered.",
)
LABELS_MERCHANT_MISMATCH = Counter(
    "fraud_labels_merchant_mismatch_total",
    "Labels naming another merchant than their transaction's (applied to the transaction's).",
)
DRIFT_LATE = Counter(
    "fraud_drift_late_total",
    "Rows or partition partials that arrived after their drift window was handed on.",
)
DRIFT_SNAPSHOTS = Counter(
    "fraud_drift_snapshots_total", "Drift snapshots published, by completeness.", ["complete"]
)
DRIFT_FEATURE_PSI = Gauge(
    "fraud_drift_feature_psi", "PSI of each feature in the latest drift window.", ["feature"]
)
DRIFT_SCORE_PSI = Gauge("fraud_drift_score_psi", "PSI of the score in the latest drift window.")
DRIFT_ALERTS = Gauge(
    "fraud_drift_alerts", "Features (and the score) above the PSI threshold in the latest window."
)
DRIFT_WINDOW_END = Gauge(
    "fraud_drift_window_end_seconds", "Event-time end of the latest published drift window."
)
FEEDBACK_PRECISION = Gauge(
    "fraud_label_precision", "Precision from the labels of the latest window.",
    ["model_version", "threshold"],
)
FEEDBACK_RECALL = Gauge(
    "fraud_label_recall", "Recall from the labels of the latest window.",
    ["model_version", "threshold"],
)
SHADOW_AGREEMENT_RATIO = Gauge(
    "fraud_shadow_agreement_ratio", "Share of equal decisions, shadow vs champion, latest window."
)
SHADOW_CORRELATION = Gauge(
    "fraud_shadow_score_correlation",
    "Pearson correlation of shadow and champion scores, latest window."
)
STATE_BYTES = Gauge(
    "fraud_state_disk_bytes", "Approximate RocksDB size per store.", ["store"]
)


RULE_HITS = Counter(
    "fraud_rule_hits_total",
    "Transactions a rule matched, by rule and mode (shadow rules never change a decision).",
    ["rule_id", "mode"],
)
RULE_OVERLAP = Counter(
    "fraud_rule_model_overlap_total",
    "Rule hits by whether the model flagged the same transaction (review or decline).",
    ["rule_id", "mode", "model"],
)
RULE_ERRORS = Counter(
    "fraud_rule_errors_total",
    "Transactions a rule could not be evaluated on (CEL error, e.g. a missing attribute); "
    "the rule did not hit them.",
    ["rule_id"],
)
RULES_DISABLED = Counter(
    "fraud_rules_disabled_total",
    "Rules the stream's cost guard took out of force (over FRAUD_RULE_COST_US per transaction "
    "in FRAUD_RULE_OVERRUN_BATCHES consecutive batches, or ten times over in one), per merchant "
    "shard; rule_id is bounded by FRAUD_RULES_MAX.",
    ["rule_id"],
)
SHADOW_RULES_SKIPPED = Counter(
    "fraud_shadow_rules_skipped_total",
    "Batches in which a shadow rule was not evaluated because the batch's shadow budget "
    "(FRAUD_SHADOW_RULES_COST_US per transaction) was spent; live rules are never skipped.",
    ["rule_id"],
)
RULE_CHANGES = Counter(
    "fraud_rule_changes_total",
    "Signed records of the rules and lists topics the rule book accepted: applied (in force, "
    "or a no-op re-delivery) or pending (loosens decisions, waits for a second analyst).",
    ["topic", "outcome"],
)
RULE_REFUSED = Counter(
    "fraud_rule_messages_refused_total",
    "Records of the rules and lists topics the rule book refused (dead-lettered), by error "
    "class: *_unauthenticated (unsigned, a bad or untrusted signature, a tombstone), "
    "*_invalid, rule_compile, rule_conflict, ...",
    ["topic", "error_class"],
)
RULE_PENDING = Gauge(
    "fraud_rule_changes_pending",
    "Signed changes that loosen decisions and wait for a second analyst (change no verdict).",
    ["topic"],
)
RULE_DECISION_CHANGES = Counter(
    "fraud_rule_decision_changes_total",
    "Verdicts whose decision active rules changed from the model's, by both decisions.",
    ["model_decision", "decision"],
)
EVENT_TIME_LATE = Counter(
    "fraud_event_time_late_total",
    "Transactions and labels that reached the merchant stage behind its event-time watermark "
    "(read after transactions two hours later were scored): their effect on merchant "
    "features may differ from the event-time answer.",
    ["kind"],
)
REORDER_FORCED = Counter(
    "fraud_reorder_forced_total",
    "Transactions released ahead of the watermark because the merchant stage's reorder "
    "buffer was full (FRAUD_REORDER_MAX).",
)
REORDER_BUFFERED = Gauge(
    "fraud_reorder_buffered", "Transactions waiting in a merchant shard for the watermark.",
    ["shard"],
)
WATERMARK = Gauge(
    "fraud_merchant_watermark_seconds",
    "Event time (epoch s) below which every input has arrived, per merchant shard.",
    ["shard"],
)
RULE_SET = Info("fraud_rule_set", "The rule set in force (version of its rules and lists).")
LIST_ENTRIES = Gauge(
    "fraud_list_entries",
    "Entries in this process's list table (one, shared by its merchant shards; "
    "FRAUD_LISTS_MAX_ENTRIES caps it).",
)
LISTS_LOAD_SECONDS = Gauge(
    "fraud_lists_load_seconds",
    "Seconds the process took at start-up to read the lists topic to its end, before scoring.",
)
FIRST_FETCH = Gauge(
    "fraud_first_fetch_timestamp_seconds",
    "When this process's source first fetched a record of the topic (Unix seconds; absent "
    "before): the start of a catch-up, for its rate (bench/throughput.py).",
    ["topic"],
)
CHANGELOG_RESTORES = Counter(
    "fraud_changelog_restores_total",
    "Stores rebuilt from their changelog topic when opened (FRAUD_CHANGELOG=on), by stage "
    "(cards, merchants) and why: missing, behind the recovery snapshot, or unclean (not "
    "closed cleanly: a kill, a lost pod).",
    ["role", "reason"],
)
CHANGELOG_RESTORED_RECORDS = Counter(
    "fraud_changelog_restored_records_total",
    "Changelog records read to rebuild stores, by stage.", ["role"],
)
CHANGELOG_RESTORE_SECONDS = Counter(
    "fraud_changelog_restore_seconds_total",
    "Seconds spent rebuilding stores from their changelogs (before they score), by stage.",
    ["role"],
)


def store_opened(db: StateDB) -> None:
    """Count a store's rebuild from its changelog, if it was rebuilt when opened."""
    rebuilt = db.rebuilt
    if rebuilt is not None:
        role = db.identity.role
        CHANGELOG_RESTORES.labels(role, rebuilt.reason).inc()
        CHANGELOG_RESTORED_RECORDS.labels(role).inc(rebuilt.records)
        CHANGELOG_RESTORE_SECONDS.labels(role).inc(rebuilt.seconds)


LAST_SNAPSHOT = Gauge(
    "fraud_last_snapshot_timestamp_seconds",
    "When this process last handed Bytewax a recovery snapshot (start time until the first); "
    "a crash replays what came after it.",
)


def serve(port: int, ready: Callable[[], tuple[bool, str]] | None = None,
          attempts: int = 16, bind: str = "127.0.0.1") -> int | None:
    """Start ``/metrics`` and ``/ready`` on ``bind:port`` or the next free port; return it.

    None: off (``port`` 0) or every port busy. The next free port serves a second process
    on the same host. ``bind`` is ``FRAUD_METRICS_BIND``: the loopback unless a scraper on
    another host must reach it (pods), since ``/metrics`` shows rule ids and hit counts.
    """
    from health.watch import start_http_server

    if port == 0:
        return None
    for candidate in range(port, port + attempts):
        try:
            start_http_server(candidate, ready or (lambda: (True, "ok")), addr=bind)
        except OSError:
            continue
        host = f"[{bind}]" if ":" in bind else bind
        log.info("metrics on http://%s:%d/metrics", host, candidate)
        return candidate
    log.warning("metrics endpoint not started: ports %d-%d are busy", port, port + attempts - 1)
    return None


@functools.cache
def _feature_gauge(feature: str) -> Gauge:
    return DRIFT_FEATURE_PSI.labels(feature=feature)


def observe_snapshot(snap: DriftSnapshot) -> None:
    """Export a published drift snapshot as the gauges above."""
    DRIFT_SNAPSHOTS.labels(complete=str(snap.complete).lower()).inc()
    if snap.count and snap.score_psi is not None:
        for feature, value in snap.feature_psi.items():
            _feature_gauge(feature).set(value)
        DRIFT_SCORE_PSI.set(snap.score_psi)
        DRIFT_ALERTS.set(len(snap.alerts))
        DRIFT_WINDOW_END.set(snap.window_end / 1000)
    fb = snap.labels
    if fb is not None:
        for threshold, precision, recall in (
            ("review", fb.precision_flagged, fb.recall_flagged),
            ("decline", fb.precision_decline, fb.recall_decline),
        ):
            if precision is not None:
                FEEDBACK_PRECISION.labels(snap.model_version, threshold).set(precision)
            if recall is not None:
                FEEDBACK_RECALL.labels(snap.model_version, threshold).set(recall)
    if snap.shadow is not None and snap.shadow.agreement is not None:
        SHADOW_AGREEMENT_RATIO.set(snap.shadow.agreement)
        if snap.shadow.score_correlation is not None:
            SHADOW_CORRELATION.set(snap.shadow.score_correlation)


def observe_many(histogram: Any, values: np.ndarray) -> None:
    """Observe every value of ``values`` in ``histogram`` (a label-less child) at once.

    One numpy pass and one update per bucket instead of one ``observe`` call per value
    (prometheus_client keeps a histogram as per-bucket counters and a sum: ``_buckets``,
    ``_upper_bounds``, ``_sum``). Falls back to ``observe`` if those internals change.
    """
    if not len(values):
        return
    if len(values) <= 16:  # a few calls beat the vector set-up
        for v in values.tolist():
            histogram.observe(v)
        return
    buckets = getattr(histogram, "_buckets", None)
    bounds = getattr(histogram, "_upper_bounds", None)
    total = getattr(histogram, "_sum", None)
    if buckets is None or bounds is None or total is None or len(buckets) != len(bounds):
        for v in np.asarray(values, dtype=np.float64).tolist():
            histogram.observe(v)
        return
    index = np.searchsorted(np.asarray(bounds, dtype=np.float64), values, side="left")
    for i, count in enumerate(np.bincount(index, minlength=len(bounds)).tolist()):
        if count:
            buckets[i].inc(count)
    total.inc(float(np.sum(values)))
