"""Drift snapshots and label feedback from the real scoring flow on the embedded broker.

One stream: the first half looks like the training data, the second half's
amounts are 40 times larger. Its labels (fraud and legit) are produced after
every verdict is out, then one transaction per merchant shard two days later
closes the last window. The snapshots must alert on the amount only after the shift,
count every transaction once, and give the precision and recall that the
published verdicts and the labels imply.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from devkit.broker import free_port
from devkit.process import FlowProcess
from drift.windows import DECISIONS
from flowkit import Collector, flow_env, metric, scrape, topic_set, wait_until
from state.partitioning import murmur2_partition
from state.spec import FEATURE_NAMES
from tiny_model import tiny_history
from topics.admin import ensure_topics
from topics.contracts import DriftSnapshot, Label, Transaction
from topics.producer import PRODUCER_DEFAULTS
from topics.registry import DEFAULT_PARTITIONS
from topics.settings import KafkaSettings
from training.history import labels
from training.simulate import SimConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAY = 86_400_000
WORLD = SimConfig(n_transactions=5_000, n_cards=200, days=10, seed=41, fraud_rate=0.05)
#: A fresh state store warms its card and merchant history up (and the score with it), and
#: short windows are not all hours of the week: watch the per-transaction features.
WATCHED = ("amount", "log_amount", "channel", "entry_mode", "card_cross_border")
encode = msgspec.json.Encoder().encode


def _shifted(txns: list[Transaction], from_ms: int) -> list[Transaction]:
    return [msgspec.structs.replace(t, amount=round(t.amount * 40, 2)) if t.event_time >= from_ms
            else t for t in txns]


def _first_per_partition(prefix: str, n: int) -> dict[int, str]:
    found: dict[int, str] = {}
    i = 0
    while len(found) < n:
        found.setdefault(murmur2_partition(f"{prefix}-{i}", n), f"{prefix}-{i}")
        i += 1
    return found


def _closers(after_ms: int, shards: int, inputs: int) -> list[Transaction]:
    """One transaction per (input partition, merchant shard) at ``after_ms``.

    A shard's drift clock is the slowest of its input partitions (a watermark):
    every input partition has to move on for the last window to close.
    """
    merchants = _first_per_partition("closer", shards)
    cards = _first_per_partition("closer-card", inputs)
    return [Transaction(transaction_id=f"close-{s}-{p}", card_id=card, merchant_id=merchant,
                        amount=10.0, currency="EUR", event_time=after_ms)
            for s, merchant in sorted(merchants.items()) for p, card in sorted(cards.items())]


def _read_drift(settings: KafkaSettings, consumer: Consumer, into: list[DriftSnapshot]) -> None:
    for msg in consumer.consume(100, 0.1):
        if msg.error() is None and msg.value() is not None:
            into.append(msgspec.json.decode(msg.value(), type=DriftSnapshot))


def test_drift_alerts_after_the_shift_and_labels_give_precision_and_recall(
    kafka: KafkaSettings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    history = tiny_history(WORLD)
    start = min(t.event_time for t in history.transactions)
    shift_at = (start // DAY + 5) * DAY
    txns = _shifted(history.transactions, shift_at)
    end = max(t.event_time for t in txns)
    closing = _closers(end + 2 * DAY, 8, DEFAULT_PARTITIONS)
    # every label known by the end of the stream
    all_labels = [msgspec.structs.replace(lab, label_time=min(lab.label_time, end))
                  for lab in labels(history, legit_labels=True)]

    settings = topic_set(kafka, "drift")
    ensure_topics(settings)
    port = free_port()
    env = flow_env(
        settings, tiny_model_dir, tmp_path, FRAUD_METRICS_PORT=str(port),
        FRAUD_DRIFT_WINDOW_SECONDS="86400", FRAUD_DRIFT_GRACE_SECONDS="0",
        FRAUD_DRIFT_FLUSH_SECONDS="3600", FRAUD_DRIFT_MIN_COUNT="100",
        FRAUD_DRIFT_IGNORE=",".join(n for n in (*FEATURE_NAMES, "score") if n not in WATCHED),
        FRAUD_SAMPLE_RATE="0",
    )
    producer = Producer(settings.client_config(**PRODUCER_DEFAULTS))

    def produce(topic: str, events: list[Transaction] | list[Label], key: str) -> None:
        for e in events:
            producer.produce(settings.topic(topic), key=getattr(e, key).encode(), value=encode(e))
            producer.poll(0)
        assert producer.flush(30) == 0

    collector = Collector(settings)
    collector.start()
    drift_consumer = Consumer(settings.client_config(
        **{"group.id": "test", "enable.auto.commit": False, "fetch.wait.max.ms": 10}))
    drift_consumer.assign([TopicPartition(settings.topic("drift"), 0, 0)])
    snapshots: list[DriftSnapshot] = []
    flow = FlowProcess(env, tmp_path / "flow.log")
    try:
        produce("transactions", txns, "card_id")
        collector.wait_for(len(txns), [flow])
        produce("labels", all_labels, "transaction_id")
        wait_until(lambda: metric(scrape(port), "fraud_labels_total") >= len(all_labels),
                   [flow], "every label applied")
        produce("transactions", closing, "card_id")
        last_window = end // DAY * DAY
        wait_until(lambda: any(s.window_start == last_window for s in snapshots), [flow],
                   "the last window's snapshot",
                   tick=lambda: _read_drift(settings, drift_consumer, snapshots))
        samples = scrape(port)
    finally:
        flow.stop()
        outcome = collector.stop()
        drift_consumer.close()

    # every window complete, every transaction counted once, one model version
    assert all(s.complete and s.partitions == 8 for s in snapshots)
    per_window = Counter(t.event_time // DAY * DAY for t in txns)
    assert {s.window_start: s.count for s in snapshots if s.count} == dict(per_window)
    assert {s.model_version for s in snapshots} == {tiny_model_dir.name}

    # PSI alerts: none before the shift, the amount after it
    for snap in snapshots:
        assert set(snap.feature_psi) == set(FEATURE_NAMES)
        if snap.window_end <= shift_at:
            assert snap.alerts == [], (snap.window_start, snap.feature_psi)
        elif snap.window_start >= shift_at:
            assert {"amount", "log_amount"} <= set(snap.alerts), snap.feature_psi
            assert set(snap.alerts) <= set(WATCHED)

    # label feedback: what the published verdicts and the labels imply
    decision = {tid: vs[0].decision for tid, vs in outcome.verdicts.items()}
    expected = Counter((decision[lab.transaction_id], lab.is_fraud) for lab in all_labels)
    got: Counter[tuple[str, bool]] = Counter()
    for snap in snapshots:
        if snap.labels is not None:
            fb = snap.labels
            for d in DECISIONS:
                got[(d, True)] += getattr(fb, f"fraud_{d.rstrip('e')}ed")
                got[(d, False)] += getattr(fb, f"legit_{d.rstrip('e')}ed")
    assert +got == +expected
    assert sum(s.labels_unknown for s in snapshots) == 0
    fraud = sum(n for (_, is_fraud), n in expected.items() if is_fraud)
    flagged_fraud = expected[("review", True)] + expected[("decline", True)]
    flagged = flagged_fraud + expected[("review", False)] + expected[("decline", False)]
    with_labels = [s.labels for s in snapshots if s.labels is not None]
    if len(with_labels) == 1:  # all labels arrived in one window: its ratios are the totals
        assert with_labels[0].recall_flagged == pytest.approx(flagged_fraud / fraud)
        assert with_labels[0].precision_flagged == pytest.approx(flagged_fraud / flagged)
    # and the same counts as metrics, per model version
    for (d, is_fraud), n in expected.items():
        truth = "fraud" if is_fraud else "legit"
        assert metric(samples, "fraud_label_feedback_total", decision=d, truth=truth) == n
