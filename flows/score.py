"""The scoring dataflow: ``python -m bytewax.run flows.score``.

::

    transactions ─▶ decode ─┬──────────────────────────────▶ dead-letter
    labels ──────▶ decode ──┤ (invalid messages, bytes kept)
                            ▼
        key by input partition (a label: its card's partition)
                            ▼
        score: RocksDB card + merchant state, micro-batched ONNX,
               decision, reason codes (one step per partition) ─▶ predictions
               label feedback, drift counts, vector sample (Parquet)
                            ▼ closed event-time windows, per partition
        drift: merge all partitions, PSI vs the model's reference ─▶ drift

Recommended run (see README, "Running the flow"): initialise recovery
partitions once with ``python -m bytewax.recovery <dir> <n>``, then
``python -m bytewax.run flows.score -r <dir> -s 10 -b 0``. Scale with processes
(``-i/-a``), not threads. Step ids below are part of Bytewax's recovery state:
renaming one orphans its snapshots.

``flow`` is built on first access from the ``FRAUD_*`` environment (see
:mod:`flows.settings`), so importing this module reads nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import gc
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, cast

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow, Stream
from bytewax.operators import StatefulBatchLogic

from export.metadata import Thresholds
from export.model import ScoringModel, load_model
from flows import kafka, metrics
from flows.decode import Sourced, decode
from flows.drift import DriftAggregator, DriftPartial, PartitionDrift
from flows.kafka import SinkRecord
from flows.samples import SampleWriter
from flows.scorer import PartitionScorer
from flows.serving import ModelSource
from flows.settings import DriftSettings, ScoringSettings
from state.errors import StateError
from state.options import StoreOptions
from state.partitioning import murmur2_partition
from state.store import PartitionStore
from topics.admin import partition_count
from topics.contracts import DriftSnapshot, Label, Transaction
from topics.errors import ConfigError, FraudStreamError
from topics.validation import LabelDecoder, TransactionDecoder

log = logging.getLogger("flows.score")
_encode = msgspec.json.Encoder().encode


class PartitionEvent(NamedTuple):
    """A transaction or a label, tagged with the input partition whose state it belongs to."""

    partition: int
    item: Sourced[Transaction] | Sourced[Label]


class _ScoreLogic(StatefulBatchLogic[PartitionEvent, SinkRecord | DriftPartial, int]):
    """Bytewax adapter: one :class:`PartitionScorer` per input partition, opened lazily.

    Its snapshot is the store's last applied offset. On resume, a store *behind*
    that snapshot (a lost or stale state volume) would silently skip the
    transactions in between, so the step stops instead, saying what to do.

    A partition idle for ``idle_seconds`` hands its open drift windows on, so the
    end of a stream (or a quiet partition) does not hold them back forever; rows
    for those windows that come later are counted as late.
    """

    def __init__(self, open_scorer: Any, resume_offset: int | None, idle_seconds: float) -> None:
        self._open_scorer = open_scorer
        self._resume_offset = resume_offset
        self._idle_seconds = idle_seconds
        self._scorer: PartitionScorer | None = None
        self._last_batch = time.time()

    def _open(self, partition: int) -> PartitionScorer:
        scorer: PartitionScorer = self._open_scorer(partition)
        applied = scorer.store.last_offset
        if self._resume_offset is not None and applied < self._resume_offset:
            raise StateError(
                f"partition {partition}: the state store has applied offsets up to {applied}, "
                f"but Bytewax's recovery snapshot says {self._resume_offset}; the state "
                "directory is stale or lost. Restore it, or delete both the state directory "
                "(FRAUD_STATE_DIR) and the recovery directory to rebuild from the topic"
            )
        return scorer

    def on_batch(
        self, values: list[PartitionEvent]
    ) -> tuple[list[SinkRecord | DriftPartial], bool]:
        if self._scorer is None:
            self._scorer = self._open(values[0].partition)
        labels = [v.item.value for v in values if isinstance(v.item.value, Label)]
        txns: list[Sourced[Transaction]] = [
            v.item for v in values if isinstance(v.item.value, Transaction)
        ]
        self._last_batch = time.time()
        self._scorer.apply_labels(labels)
        verdicts = self._scorer.score(txns)
        self._scorer.join_labels()
        out: list[SinkRecord | DriftPartial] = list(verdicts)
        partial = self._scorer.drift.close() if self._scorer.drift is not None else None
        if partial is not None:
            out.append(partial)
        return out, False

    def notify_at(self) -> datetime | None:
        drift = self._scorer.drift if self._scorer is not None else None
        if drift is None or not drift.has_open_windows:
            return None
        return datetime.fromtimestamp(self._last_batch + self._idle_seconds, tz=UTC)

    def on_notify(self) -> tuple[list[SinkRecord | DriftPartial], bool]:
        drift = self._scorer.drift if self._scorer is not None else None
        partial = drift.close(idle=True) if drift is not None else None
        return ([partial] if partial is not None else []), False

    def snapshot(self) -> int:
        # RocksDB holds the state; Bytewax keeps this offset so a resume can check that
        # the store is not behind it (see _open).
        if self._scorer is None:
            return -1
        store = self._scorer.store
        metrics.STATE_BYTES.labels(partition=str(store.partition)).set(
            store.approximate_disk_bytes()
        )
        return store.last_offset


class _DriftLogic(StatefulBatchLogic[DriftPartial, DriftSnapshot, DriftAggregator]):
    """Bytewax adapter of the one :class:`DriftAggregator` (all partitions' partials)."""

    def __init__(self, aggregator: DriftAggregator) -> None:
        self._agg = aggregator

    def _publish(self, snapshots: list[DriftSnapshot]) -> tuple[list[DriftSnapshot], bool]:
        for snap in snapshots:
            metrics.observe_snapshot(snap)
            if snap.alerts:
                log.warning(
                    "drift: model %s, window %d..%d (%d transactions): PSI above %.2f for %s",
                    snap.model_version, snap.window_start, snap.window_end, snap.count,
                    snap.psi_threshold, ", ".join(snap.alerts),
                )
        return snapshots, False

    def on_batch(self, values: list[DriftPartial]) -> tuple[list[DriftSnapshot], bool]:
        late = self._agg.late_partials
        out = [snap for partial in values for snap in self._agg.add(partial, time.time())]
        metrics.DRIFT_LATE.inc(self._agg.late_partials - late)
        return self._publish(out)

    def on_notify(self) -> tuple[list[DriftSnapshot], bool]:
        return self._publish(self._agg.flush(time.time()))

    def notify_at(self) -> datetime | None:
        due = self._agg.due()
        return datetime.fromtimestamp(due, tz=UTC) if due is not None else None

    def snapshot(self) -> DriftAggregator:
        return copy.deepcopy(self._agg)  # Bytewax pickles it later: hand over a frozen copy


def drift_aggregator(
    settings: DriftSettings, n_partitions: int, resumed: DriftAggregator | None
) -> DriftAggregator:
    """A fresh aggregator, or the resumed one when its window and partitions still apply."""
    fresh = DriftAggregator(
        n_partitions, settings.window_ms, settings.psi_threshold, settings.min_count,
        settings.flush_seconds, settings.ignore,
    )
    if resumed is None or (resumed.window_ms, resumed.n_partitions) != (
        fresh.window_ms, fresh.n_partitions
    ):
        return fresh
    return dataclasses.replace(
        resumed, psi_threshold=fresh.psi_threshold, min_count=fresh.min_count,
        flush_seconds=fresh.flush_seconds, ignore=fresh.ignore,
    )


def check_partitions(model: ScoringModel, settings: ScoringSettings, n_partitions: int) -> None:
    """Refuse a topic whose partition count differs from the one the model's features used."""
    trained_on = model.metadata.feature_partitions
    if trained_on and trained_on != n_partitions:
        raise ConfigError(
            f"model {model.version} computed merchant features over {trained_on} partitions, "
            f"but {settings.kafka.topic('transactions')!r} has {n_partitions}; retrain with "
            f"the topic's partition count (just train) or use a topic with {trained_on}"
        )


def serving_thresholds(settings: ScoringSettings, model: ScoringModel) -> Thresholds:
    """The model's thresholds, with the ``FRAUD_*_THRESHOLD`` overrides (0.0 included)."""
    review, decline = model.thresholds.review, model.thresholds.decline
    if settings.review_threshold is not None:
        review = settings.review_threshold
    if settings.decline_threshold is not None:
        decline = settings.decline_threshold
    if review > decline:
        raise ConfigError(
            f"review threshold {review} would be above decline threshold {decline}; "
            "set FRAUD_REVIEW_THRESHOLD and FRAUD_DECLINE_THRESHOLD together"
        )
    policy = model.thresholds.policy
    if (review, decline) != (model.thresholds.review, model.thresholds.decline):
        policy = f"overridden by FRAUD_*_THRESHOLD (model: {policy})"
    return Thresholds(review=review, decline=decline, policy=policy)


def model_source(
    settings: ScoringSettings, path: Path, n_partitions: int, role: str
) -> ModelSource:
    """A hot-reloaded model: the champion gets the threshold overrides, a shadow its own."""
    return ModelSource(
        path,
        thresholds=(lambda m: serving_thresholds(settings, m)) if role == "champion"
        else (lambda m: m.thresholds),
        check=lambda m: check_partitions(m, settings, n_partitions),
        max_reasons=settings.reason_codes,
        interval=settings.model_reload_seconds,
        role=role,
    )


def build_flow(settings: ScoringSettings, n_partitions: int | None = None) -> Dataflow:
    """The scoring dataflow for ``settings``; loads and checks the model first."""
    load_model(settings.model_path)  # before any network call: fail fast
    if settings.shadow_model_path is not None:
        load_model(settings.shadow_model_path)
    parts = n_partitions or partition_count(settings.kafka, settings.kafka.topic("transactions"))
    champion = model_source(settings, settings.model_path, parts, "champion")
    shadow = (
        model_source(settings, settings.shadow_model_path, parts, "shadow")
        if settings.shadow_model_path is not None else None
    )
    live = champion.current
    metrics.MODEL_INFO.info(
        {"version": live.version, "feature_spec_version": live.model.feature_spec_version}
    )
    drift = settings.drift
    store_options = StoreOptions(verdict_horizon_ms=drift.verdict_horizon_ms)
    log.info(
        "model %s (spec %s), thresholds review=%.4f decline=%.4f, shadow %s, %d partitions, "
        "state in %s", live.version, live.model.feature_spec_version, live.thresholds.review,
        live.thresholds.decline, shadow.current.version if shadow else "none", parts,
        settings.state_dir,
    )

    def open_scorer(partition: int) -> PartitionScorer:
        store = PartitionStore.open(settings.state_dir, partition, store_options)
        samples = (
            SampleWriter(drift.sample_dir, partition, drift.sample_rate)
            if drift.sample_rate > 0 else None
        )
        return PartitionScorer(
            store, champion, shadow,
            drift=PartitionDrift(partition, drift.window_ms, drift.grace_ms), samples=samples,
        )

    flow = Dataflow("fraud-score")
    txn_msgs = kafka.read(
        "transactions-in", flow, settings.kafka, "transactions", batch_size=settings.batch_max
    )
    txns = decode(
        "decode-transactions", txn_msgs,
        TransactionDecoder(settings.max_message_bytes, settings.max_future_ms),
    )
    # Labels are days late anyway: a long fetch wait keeps 8 idle consumers cheap.
    label_msgs = kafka.read("labels-in", flow, settings.kafka, "labels",
                            config={"fetch.wait.max.ms": "200"})
    labels = decode(
        "decode-labels", label_msgs,
        LabelDecoder(settings.max_message_bytes, settings.max_future_ms),
    )
    dead = op.merge("dead-letters", txns.errs, labels.errs)
    op.output("dead-letter-out", dead, kafka.sink(settings.kafka, "dead-letter"))

    def tag_transaction(s: Sourced[Transaction]) -> PartitionEvent:
        # Labels are routed with murmur2; a producer using another partitioner splits a
        # card's labels from its transactions. Check one transaction in 64 and count.
        if s.offset % 64 == 0 and murmur2_partition(s.value.card_id, parts) != s.partition:
            metrics.MISPARTITIONED.inc()
        return PartitionEvent(s.partition, s)

    txn_events = op.map("tag-transactions", txns.oks, tag_transaction)
    label_events = op.map(
        "tag-labels", labels.oks,
        lambda s: PartitionEvent(murmur2_partition(s.value.card_id, parts), s),
    )
    events = op.key_on(
        "key-by-partition", op.merge("events", txn_events, label_events),
        lambda e: str(e.partition),
    )
    verdicts = op.stateful_batch(
        "score", events, lambda resume: _ScoreLogic(open_scorer, resume, drift.flush_seconds)
    )
    scored = op.branch(
        "split-drift", op.key_rm("unkey", verdicts),
        lambda x: not isinstance(x, DriftPartial),
    )
    predictions = cast(Stream[SinkRecord], scored.trues)
    op.output("predictions-out", predictions, kafka.sink(settings.kafka, "predictions"))
    partials = op.key_on("key-drift", cast(Stream[DriftPartial], scored.falses), lambda _: "all")
    snapshots = op.stateful_batch(
        "drift", partials, lambda resumed: _DriftLogic(drift_aggregator(drift, parts, resumed))
    )
    drift_msgs = op.map(
        "encode-drift", op.key_rm("unkey-drift", snapshots),
        lambda s: SinkRecord(f"{s.window_start}/{s.model_version}".encode(), _encode(s)),
    )
    op.output("drift-out", drift_msgs, kafka.sink(settings.kafka, "drift"))
    return flow


def _tune_gc() -> None:
    """Keep the cyclic GC off the hot path: the scoring path makes no reference cycles.

    Everything loaded at start-up (model, modules) moves to the permanent
    generation, and young collections run per 50,000 allocations, not 700:
    with the defaults a collection ran after almost every batch (6.5% of the
    flow's time in a py-spy profile).
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _flow_from_env() -> Dataflow:
    try:
        settings = ScoringSettings.from_env()
        logging.basicConfig(
            level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        if settings.kafka.bootstrap_servers is None:
            raise ConfigError(
                "KAFKA_BOOTSTRAP_SERVERS is not set; point it at your Kafka "
                "(for development: run `just broker` and export the address it prints)"
            )
        flow = build_flow(settings)
        metrics.serve(settings.metrics_port)
        _tune_gc()
        return flow
    except FraudStreamError as exc:
        print(f"flows.score: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


@functools.cache
def _cached_flow() -> Dataflow:
    return _flow_from_env()


def __getattr__(name: str) -> Dataflow:
    if name == "flow":
        return _cached_flow()
    raise AttributeError(name)
