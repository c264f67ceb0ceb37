"""The scoring dataflow: ``python -m bytewax.run flows.score``.

::

    transactions ─▶ decode ─┬──────────────────────────────────────▶ dead-letter
    labels ──────▶ decode ──┤ (invalid, mis-keyed if refused, conflicts: bounded records)
                            ▼
        key by card (its murmur2 partition; mis-keyed records routed to it)
                            ▼
        card: RocksDB card windows, idempotent by transaction id (one step per card shard)
                            ▼  + labels
        key by merchant (over ALL traffic)
                            ▼
        merchant: RocksDB merchant windows and labels, micro-batched ONNX (champion +
                  shadow), decision, reason codes, verdicts stored by transaction id;
                  label feedback, drift counts, vector sample ─▶ predictions
                            ▼ closed event-time windows, per merchant shard
        drift: merge all shards, PSI vs the model's reference ─▶ drift

Recommended run (see README, "Running the flow"): initialise recovery
partitions once with ``mkdir -p <dir> && python -m bytewax.recovery <dir> <n>``, then
``python -m bytewax.run flows.score -r <dir> -s 5 -b 0``. Scale with processes
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
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

import bytewax.operators as op
import msgspec
import numpy as np
from bytewax.dataflow import Dataflow, Stream
from bytewax.operators import StatefulBatchLogic

from changelog.kafka import KafkaChangelog
from changelog.kafka import ensure as ensure_changelog
from changelog.recovery import BackupThread, RecoveryBackup
from changelog.recovery import check_run as check_backup_run
from drift.samples import SampleWriter
from drift.samples import prepare as prepare_samples
from drift.windows import DriftAggregator, DriftPartial, PartitionDrift
from export.model import load_model
from flows import alignment, kafka, metrics, routing
from flows.card_stage import CardLogic
from flows.decode import (
    DeadLetterRecord,
    KeyRule,
    SkewRule,
    decode_labels,
    decode_transactions,
    records,
)
from flows.items import SinkBatch
from flows.kafka import SinkRecord
from flows.list_loader import load_lists
from flows.merchant_stage import MerchantLogic, MerchantSnapshot, broadcast
from flows.scorer import MerchantScorer
from flows.serving import ModelSource, check_rates, model_rates
from flows.settings import DriftSettings, ScoringSettings
from health import watch as health
from lifecycle import cluster
from lifecycle import process as lifecycle
from rules.book import RuleBook
from rules.signing import load_trusted
from scoring.serving import serving_thresholds
from state.card_store import CardStore
from state.db import StoreIdentity, check_state_dir
from state.kernels.warm import load as load_kernels
from state.lock import lock_recovery_dir, lock_state_dir
from state.merchant_store import MerchantStore
from state.options import StoreOptions
from topics.admin import partition_count
from topics.contracts import DriftSnapshot, Transaction
from topics.currency import RateTable, load_rates_file, reference_amount, serving_rates
from topics.errors import ConfigError, FraudStreamError
from topics.pan import CardGuard, PanKey
from topics.validation import LabelDecoder, TransactionDecoder
from tracing import spans as tracing

log = logging.getLogger("flows.score")
_encode = msgspec.json.Encoder().encode
#: Far enough ahead to accept anything: under the clamp policy the decode step clamps.
_NO_FUTURE_LIMIT = 10**15


class _DriftLogic(StatefulBatchLogic[DriftPartial, DriftSnapshot, DriftAggregator]):
    """Bytewax adapter of the one :class:`DriftAggregator` (all shards' partials)."""

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
    settings: DriftSettings, n_shards: int, resumed: DriftAggregator | None
) -> DriftAggregator:
    """A fresh aggregator, or the resumed one when its window and shards still apply."""
    fresh = DriftAggregator(
        n_shards, settings.window_ms, settings.psi_threshold, settings.min_count,
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


def model_source(settings: ScoringSettings, path: Any, rates: RateTable, role: str
                 ) -> ModelSource:
    """A hot-reloaded model: the champion gets the threshold overrides, a shadow its own."""
    return ModelSource(
        path,
        thresholds=(lambda m: serving_thresholds(m, settings.review_threshold,
                                                 settings.decline_threshold))
        if role == "champion" else (lambda m: m.thresholds),
        check=check_rates(rates),
        max_reasons=settings.reason_codes,
        interval=settings.model_reload_seconds,
        role=role,
    )


def amounts(rates: RateTable) -> Callable[[list[Transaction]], np.ndarray]:
    """Reference-currency amounts of transactions with ``rates`` (billing amount first).

    NaN where no rate converts the amount: scored with neutral amount features
    (:mod:`state.inputs`).
    """
    return lambda txns: np.fromiter((reference_amount(t, rates) for t in txns), np.float64,
                                    len(txns))


def build_flow(settings: ScoringSettings, n_partitions: int | None = None,
               topic_id: str = "", process_id: int = 0) -> Dataflow:
    """The scoring dataflow for ``settings``; loads and checks the model first.

    ``topic_id`` is the broker's id of the ``transactions`` topic: every state store
    records it and refuses to serve another topic (or the same name re-created).
    Before it returns, the process's list table is read from the ``lists`` topic
    (:mod:`flows.list_loader`); ``process_id`` (``-i``): process 0 reports the lists
    records (dead letter, metric, log), once for the cluster.
    """
    rates = model_rates(load_model(settings.model_path))  # before any network call: fail fast
    # amounts convert with the model's table, then the operator's file, then the committed one;
    # the state stays keyed to the model's table (a new day's file needs no new state)
    serving = serving_rates(rates, load_rates_file(settings.rates_file)
                            if settings.rates_file is not None else None)
    if settings.shadow_model_path is not None:
        check_rates(rates)(load_model(settings.shadow_model_path))
    # PANs sent as card_id: tokenised with this key at decode, or refused without one
    guard = CardGuard(PanKey.from_file(settings.pan_key_file)
                      if settings.pan_key_file is not None else None)
    topic = settings.kafka.topic("transactions")
    parts = n_partitions or partition_count(settings.kafka, topic)
    label_parts = partition_count(settings.kafka, settings.kafka.topic("labels"))
    shards = settings.merchant_shards
    cards = settings.card_shards
    champion = model_source(settings, settings.model_path, rates, "champion")
    shadow = (
        model_source(settings, settings.shadow_model_path, rates, "shadow")
        if settings.shadow_model_path is not None else None
    )
    def reload_models() -> None:
        # Polled by the card stage, which runs before the merchant stage in each worker step:
        # every merchant shard of a step then scores with the same model (flows/scorer.py).
        champion.poll()
        if shadow is not None:
            shadow.poll()

    live = champion.current
    metrics.MODEL_INFO.info(
        {"version": live.version, "feature_spec_version": live.model.feature_spec_version}
    )
    drift = settings.drift
    options = StoreOptions(txn_horizon_ms=drift.verdict_horizon_ms,
                           label_horizon_ms=drift.label_horizon_ms)
    trust = load_trusted(settings.rules_trusted_keys)  # rules and lists: signed analysts only
    (log.info if trust.analysts else log.warning)("rules and lists: trusting %s",
                                                  trust.describe())
    log.info(
        "model %s (spec %s, amounts in %s, rates %s: %d currencies), thresholds review=%.4f "
        "decline=%.4f, "
        "shadow %s, %d card shards over %d partitions of %s, %d merchant shards, state in %s",
        live.version, live.model.feature_spec_version, rates.reference, serving.version,
        len(serving.per_reference),
        live.thresholds.review, live.thresholds.decline,
        shadow.current.version if shadow else "none", cards, parts, topic, shards,
        settings.state_dir,
    )

    scale = f"{rates.reference}/{rates.version}"

    def card_identity(shard: int) -> StoreIdentity:
        return StoreIdentity("cards", shard, cards, topic, topic_id, scale)

    def merchant_identity(shard: int) -> StoreIdentity:
        return StoreIdentity("merchants", shard, shards, topic, topic_id, scale)

    # a state directory of another topic set or rate table is refused now, not at its
    # shard's first record
    check_state_dir(settings.state_dir, [*map(card_identity, range(cards)),
                                         *map(merchant_identity, range(shards))])

    budget = settings.rule_budget
    # One list table per process, shared by its merchant shards' rule books (a GlobalKTable):
    # read from the lists topic now, before scoring; never in a snapshot.
    lists = load_lists(settings.kafka, trust, budget)

    # FRAUD_CHANGELOG: every store change also to a compacted topic, stores restored from it
    card_log = merchant_log = None
    if settings.changelog:
        ensure_changelog(settings.kafka, "cards", cards)
        ensure_changelog(settings.kafka, "merchants", shards)
        card_log = KafkaChangelog(settings.kafka, "cards")
        merchant_log = KafkaChangelog(settings.kafka, "merchants")

    def open_cards(shard: int, at_least: int) -> CardStore:
        return CardStore.open(settings.state_dir, card_identity(shard), options, card_log,
                              at_least)

    def open_scorer(shard: int, resumed: MerchantSnapshot | None) -> MerchantScorer:
        store = MerchantStore.open(settings.state_dir, merchant_identity(shard), options,
                                   merchant_log, resumed.seq if resumed is not None else 0)
        samples = (
            SampleWriter(drift.sample_dir, shard, drift.sample_rate)
            if drift.sample_rate > 0 else None
        )
        book = (RuleBook.restore(resumed.rules, trust=trust, budget=budget, table=lists)
                if resumed is not None and resumed.rules
                else RuleBook(trust=trust, budget=budget, table=lists))
        windows = resumed.drift if resumed is not None else None
        return MerchantScorer(
            store, champion, shadow, topic=topic, reference_currency=rates.reference,
            rate_table=serving.version,
            drift=windows or PartitionDrift(shard, drift.window_ms, drift.grace_ms,
                                            drift.flush_seconds, cards),
            samples=samples, rules=book, shard=shard, reports_lists=process_id == 0,
        )

    # one-time costs now, not in the first batch: numba's kernels, pyarrow's first conversion
    log.info("numba kernels loaded in %.2f s", load_kernels())
    if drift.sample_rate > 0:
        prepare_samples()

    skew = SkewRule(settings.max_skew_ms, settings.skew_policy)
    future = settings.max_skew_ms if settings.skew_policy == "dead-letter" else _NO_FUTURE_LIMIT
    alignment.configure(settings.align_ms)
    routing.configure(settings.routing)  # the shards' Bytewax keys (FRAUD_ROUTING)
    idle = settings.input_idle_ms
    flow = Dataflow("fraud-score")
    # W3C traceparent continued, spans over OTLP (FRAUD_TRACING; None: off, no cost)
    tracer = tracing.configure(settings.tracing, settings.trace_sample_rate, topic, os.environ)
    txn_polls = kafka.read("transactions-in", flow, settings.kafka, "transactions",
                           batch_size=settings.batch_max, idle_ms=idle, aligned=True,
                           linger_ms=settings.input_linger_ms, headers=tracer is not None)
    txns = decode_transactions(
        "decode-transactions", txn_polls,
        TransactionDecoder(settings.max_message_bytes, future, rates=serving, cards=guard), skew,
        KeyRule(parts, settings.miskeyed), card_shards=cards, tracing=tracer,
    )
    # Labels are days late anyway: a long fetch wait keeps idle consumers cheap.
    label_polls = kafka.read("labels-in", flow, settings.kafka, "labels",
                             config={"fetch.wait.max.ms": "200"}, idle_s=0.05, idle_ms=idle)
    labels = decode_labels(
        "decode-labels", label_polls,
        LabelDecoder(settings.max_message_bytes, future, cards=guard), skew,
        shards,
    )
    carded = op.branch(
        "split-card", op.key_rm("unkey-card", op.stateful_batch(
            "card", txns.oks,
            lambda resume: CardLogic(open_cards, amounts(serving), topic, parts, shards, resume,
                                     settings.miskeyed_hold_ms,
                                     grace_s=settings.idle_grace_ms / 1000, card_shards=cards,
                                     before_batch=reload_models),
        )),
        lambda x: not isinstance(x, DeadLetterRecord),
    )
    # Rules and lists: every merchant shard keeps a rule book, so each gets every record (a
    # lists record is applied once per process, by the first shard: the books share a table).
    rule_polls = op.merge(
        "rule-records",
        kafka.read("rules-in", flow, settings.kafka, "rules", idle_s=0.1,
                   config={"fetch.wait.max.ms": "200"}),
        kafka.read("lists-in", flow, settings.kafka, "lists", idle_s=0.1,
                   config={"fetch.wait.max.ms": "200"}),
    )
    to_shards = op.flat_map("broadcast-rules", rule_polls,
                            lambda poll: [item for r in records(poll)
                                          for item in broadcast(r, shards)])
    merchant_in: Stream[Any] = op.merge("merchant-in", carded.trues, labels.oks, to_shards)
    scored: Stream[Any] = op.key_rm("unkey-merchant", op.stateful_batch(
        "merchant", merchant_in,
        lambda resumed: MerchantLogic(open_scorer, resumed, drift.flush_seconds, cards,
                                      label_parts, settings.reorder_max,
                                      grace_s=settings.idle_grace_ms / 1000,
                                      labels_topic=settings.kafka.topic("labels")),
    ))
    verdicts = op.branch("split-verdicts", scored, lambda x: isinstance(x, SinkBatch))
    kafka.write("predictions-out", verdicts.trues, settings.kafka, "predictions", tracer)
    rest: Any = op.branch("split-drift", verdicts.falses,
                          lambda x: isinstance(x, DriftPartial))
    dead: Stream[Any] = op.merge("dead-letters", txns.errs, labels.errs,
                                 cast(Stream[DeadLetterRecord], carded.falses),
                                 cast(Stream[DeadLetterRecord], rest.falses))
    kafka.write("dead-letter-out", dead, settings.kafka, "dead-letter")
    partials = op.key_on("key-drift", cast(Stream[DriftPartial], rest.trues), lambda _: "all")
    snapshots = op.stateful_batch(
        "drift", partials, lambda resumed: _DriftLogic(drift_aggregator(drift, shards, resumed))
    )
    drift_msgs = op.map(
        "encode-drift", op.key_rm("unkey-drift", snapshots),
        lambda s: SinkRecord(f"{s.window_start}/{s.model_version}".encode(), _encode(s)),
    )
    kafka.write("drift-out", drift_msgs, settings.kafka, "drift")
    return flow


def _processed() -> float:
    """Records the flow has finished with (scored, replayed, dead-lettered); only grows.

    The first-snapshot watch (:func:`lifecycle.process.first_snapshot`) ends the
    first execution soon after this first grows.
    """
    counters = (metrics.TRANSACTIONS_IN, metrics.REPLAYED, metrics.DEAD_LETTERS)
    return sum(sample.value for counter in counters for family in counter.collect()
               for sample in family.samples if sample.name.endswith("_total"))


def _tune_gc() -> None:
    """Keep the cyclic GC off the hot path: the scoring path makes no reference cycles.

    Everything loaded at start-up (model, modules) moves to the permanent
    generation, and young collections run per 50,000 allocations, not 700:
    with the defaults a collection ran after almost every batch (6.5% of the
    flow's time in a py-spy profile).
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


#: Held for the life of the process: directory locks (closing one releases it), the input watch.
_KEEP: list[object] = []


def _flow_from_env() -> Dataflow:
    """Settings, locks, signal handling, input checks, then the dataflow (exit 2 if refused)."""
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
        run = lifecycle.run_options()
        lifecycle.install(
            debug_log=settings.debug_log or lifecycle.default_debug_log(settings.state_dir),
            grace_seconds=settings.stop_grace_seconds,
            rust_backtrace=settings.log_level == "DEBUG",
        )
        _KEEP.append(lock_state_dir(settings.state_dir, run.process_id))
        if run.recovery_dir is not None:
            _KEEP.append(lock_recovery_dir(run.recovery_dir))
        routing.check_recovery(run.recovery_dir, settings.routing)
        run.publish()
        if lifecycle.previous_run_unclean(run):  # a crash loop still makes progress (#23)
            lifecycle.first_snapshot(run, _processed)
        lifecycle.clear_on_clean_return(run)
        inputs = [settings.kafka.topic("transactions"), settings.kafka.topic("labels")]
        identity = {t: health.topic_identity(settings.kafka, t) for t in inputs}
        flow = build_flow(settings, identity[inputs[0]].partitions,
                          identity[inputs[0]].topic_id or "", run.process_id or 0)
        _start_recovery_backup(settings, run, inputs[0], identity[inputs[0]].topic_id or "")
        watch = health.TopicWatch(
            settings.kafka, inputs, {t: i.partitions for t, i in identity.items()},
            kafka.consumed_offsets, lifecycle.request_fatal, settings.input_check_seconds,
            expected_ids={t: i.topic_id for t, i in identity.items()},
            unreachable_s=settings.broker_unreachable_seconds,
        )
        metrics.serve(settings.metrics_port, health.all_ready(lifecycle.ready, watch.ready),
                      bind=settings.metrics_bind)
        metrics.LAST_SNAPSHOT.set(time.time())
        _KEEP.append(watch.start())
        # FLOW_ADDRESS_TEMPLATE (k8s/overlays/autoscale): a resized StatefulSet, a clean restart
        resize = cluster.watch_from_env(os.environ, run.processes)
        if resize is not None:
            _KEEP.append(resize.start())
        _tune_gc()
        return flow
    except (FraudStreamError, cluster.ClusterError) as exc:
        print(f"flows.score: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _start_recovery_backup(settings: ScoringSettings, run: lifecycle.RunOptions,
                           topic: str, topic_id: str) -> None:
    """Process 0 with changelogs: copy the recovery partitions to their topic (and at the end)."""
    seconds = settings.recovery_backup_seconds
    if not (settings.changelog and seconds and run.recovery_dir is not None
            and not run.process_id):
        return
    check_backup_run(seconds, run.backup_seconds, run.recovery_dir)
    backup = RecoveryBackup(settings.kafka, topic, topic_id)
    backup.ensure()
    thread = BackupThread(backup, run.recovery_dir, seconds)
    thread.start()
    _KEEP.append(thread)
    lifecycle.on_clean_return(thread.final)


@functools.cache
def _cached_flow() -> Dataflow:
    return _flow_from_env()


def __getattr__(name: str) -> Dataflow:
    if name == "flow":
        return _cached_flow()
    raise AttributeError(name)
