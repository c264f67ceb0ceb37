"""Drift counting per partition and the cross-partition aggregator (pure, no Kafka)."""

from __future__ import annotations

import numpy as np
import pytest

from drift.windows import DriftAggregator, Judged, PartitionDrift, Reference, feedback, psi
from export.metadata import ModelMetadata, Thresholds, histogram

W = 60_000  # one-minute windows
RNG = np.random.default_rng(7)
REF_A = RNG.normal(0.0, 1.0, 20_000).astype(np.float32)
REF_B = RNG.exponential(1.0, 20_000).astype(np.float32)
REF_S = RNG.beta(1, 20, 20_000).astype(np.float32)
META = ModelMetadata(
    model_version="v1", feature_spec_version="v1", feature_names=("a", "b"),
    thresholds=Thresholds(review=0.2, decline=0.5),
    feature_histograms={"a": histogram(REF_A), "b": histogram(REF_B)},
    score_histogram=histogram(REF_S),
)


def batch(n: int, t0: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Event times in [t0, t0 + W), features like the reference (a shifted by ``shift``)."""
    times = np.sort(RNG.integers(t0, t0 + W, n)).astype(np.int64)
    feats = np.column_stack([RNG.normal(shift, 1.0, n), RNG.exponential(1.0, n)])
    scores = RNG.beta(1, 20, n).astype(np.float32)
    return times, feats.astype(np.float32), scores


def test_psi_is_small_for_the_same_distribution_and_large_after_a_shift() -> None:
    ref = Reference.of(META)
    same = np.bincount(ref.feature_bins(batch(5_000, 0)[1]).ravel(), minlength=ref.n_bins)
    moved = np.bincount(ref.feature_bins(batch(5_000, 0, shift=1.5)[1]).ravel(),
                        minlength=ref.n_bins)
    assert max(ref.feature_psi(same).values()) < 0.05
    shifted = ref.feature_psi(moved)
    assert shifted["a"] > 1.0 and shifted["b"] < 0.05
    assert psi(np.zeros(3), np.full(3, 1 / 3)) == 0.0


def test_windows_merge_across_partitions_and_alert_only_after_the_shift() -> None:
    agg = DriftAggregator(2, W, psi_threshold=0.2, min_count=100, flush_seconds=60)
    parts = [PartitionDrift(p, W, grace_ms=0) for p in range(2)]
    snaps = []
    for minute in range(6):
        for part in parts:
            times, feats, scores = batch(400, minute * W, shift=2.0 if minute >= 3 else 0.0)
            decisions = META.thresholds.decide(scores)
            part.add_scored(META, times, feats, scores, decisions)
            partial = part.close()
            if partial is not None:
                snaps += agg.add(partial, now=0.0)
    # window k is complete once both partitions have seen minute k + 1
    assert [s.window_start // W for s in snaps] == [0, 1, 2, 3, 4]
    assert all(s.complete and s.partitions == 2 and s.count == 800 for s in snaps)
    assert [s.alerts for s in snaps] == [[], [], [], ["a"], ["a"]]
    assert all(abs(sum(s.decision_rates.values()) - 1) < 1e-9 for s in snaps)


def test_an_idle_partition_delays_a_window_until_the_flush_timeout() -> None:
    agg = DriftAggregator(3, W, psi_threshold=0.2, min_count=100, flush_seconds=30)
    part = PartitionDrift(0, W, grace_ms=0)
    for minute in range(2):
        times, feats, scores = batch(200, minute * W)
        part.add_scored(META, times, feats, scores, META.thresholds.decide(scores))
    partial = part.close()
    assert partial is not None
    assert agg.add(partial, now=100.0) == []
    assert agg.due() == 130.0
    assert agg.flush(now=129.0) == []
    (snap,) = agg.flush(now=130.0)
    assert (snap.complete, snap.partitions, snap.count) == (False, 1, 200)
    # the idle partition's late counts for that window are counted, not merged
    late = PartitionDrift(1, W, grace_ms=0)
    times, feats, scores = batch(10, 0)
    late.add_scored(META, times, feats, scores, META.thresholds.decide(scores))
    late.add_scored(META, times + 2 * W, feats, scores, META.thresholds.decide(scores))
    late_partial = late.close()
    assert late_partial is not None
    agg.add(late_partial, now=131.0)
    assert agg.late_partials == 1


def test_labels_give_precision_and_recall_per_model_version() -> None:
    part = PartitionDrift(0, W, grace_ms=0)
    truth_and_decision = [  # (is_fraud, decision) x count
        (True, "decline", 3), (True, "review", 1), (True, "approve", 2),
        (False, "decline", 1), (False, "review", 3), (False, "approve", 10),
    ]
    for fraud, decision, n in truth_and_decision:
        for _ in range(n):
            record = Judged(decision, "v1", "approve", "v2")
            part.add_label(10_000, fraud, record, live_version="v1")
    part.add_label(20_000, True, None, live_version="v1")
    part.add_label(3 * W, False, None, live_version="v1")  # labels do not move the clock
    assert part.close() is None
    times, feats, scores = batch(1, 2 * W)
    part.add_scored(META, times, feats, scores, META.thresholds.decide(scores))  # closes 0 and 1
    partial = part.close()
    assert partial is not None
    agg = DriftAggregator(1, W, psi_threshold=0.2, min_count=100, flush_seconds=30)
    (snap,) = agg.add(partial, now=0.0)  # window 1 is empty: no snapshot
    fb = snap.labels
    assert fb is not None and snap.count == 0 and snap.score_psi is None
    assert (fb.fraud_declined, fb.fraud_reviewed, fb.fraud_approved) == (3, 1, 2)
    assert fb.precision_flagged == pytest.approx(4 / 8)
    assert fb.recall_flagged == pytest.approx(4 / 6)
    assert fb.precision_decline == pytest.approx(3 / 4)
    assert fb.recall_decline == pytest.approx(3 / 6)
    assert snap.labels_unknown == 1
    shadow = snap.shadow  # the shadow approved everything: it would have missed all fraud
    assert shadow is not None and shadow.labels is not None and shadow.agreement is None
    assert (shadow.model_version, shadow.labels.fraud_approved, shadow.labels.recall_flagged) == (
        "v2", 6, 0.0)
    assert feedback(np.zeros((3, 2), dtype=np.int64)) is None
    part.add_label(0, True, None, live_version="v1")  # its window has closed: the next open one
    part.add_scored(META, times + W, feats, scores, META.thresholds.decide(scores))
    late = part.close()  # closes window 2 (the late label), not 3 (the label at 3 W)
    assert late is not None and late.windows[(2, "v1")].labels_unknown == 1


def test_tail_prints_a_snapshot_on_one_line() -> None:
    import msgspec

    from devkit.tail import summarize

    agg = DriftAggregator(1, W, psi_threshold=0.2, min_count=10, flush_seconds=30)
    part = PartitionDrift(0, W, grace_ms=0)
    times, feats, scores = batch(300, 0, shift=3.0)
    part.add_scored(META, times, feats, scores, META.thresholds.decide(scores))
    part.add_label(W // 2, True, Judged("decline", "v1"), live_version="v1")
    part.add_scored(META, times[:1] + 2 * W, feats[:1], scores[:1],
                    META.thresholds.decide(scores[:1]))
    partial = part.close()
    assert partial is not None
    (snap,) = agg.add(partial, now=0.0)
    line = summarize("drift", msgspec.json.encode(snap))
    assert "model=v1 n=300" in line and "alerts=a" in line
    assert "precision=1.000 recall=1.000" in line


def test_an_idle_partition_hands_its_open_windows_on() -> None:
    part = PartitionDrift(0, W, grace_ms=0)
    times, feats, scores = batch(50, 3 * W)
    part.add_scored(META, times, feats, scores, META.thresholds.decide(scores))
    assert part.close() is not None  # windows before 3 close, the open one stays
    assert part.has_open_windows
    idle = part.close(idle=True)
    assert idle is not None and list(idle.windows) == [(3, "v1")] and idle.closed_before == 4
    assert not part.has_open_windows
    # rows for the handed-on window now count as late (when the buffer is counted)
    part.add_scored(META, times[:2], feats[:2], scores[:2], META.thresholds.decide(scores[:2]))
    assert part.close(idle=True) is None and part.late_rows == 2


def test_idle_close_of_a_partition_with_labels_only_empties_it() -> None:
    part = PartitionDrift(0, W, grace_ms=0)
    part.add_label(5 * W, True, None, live_version="v1")  # no transaction: no clock yet
    assert part.close() is None and part.has_open_windows
    idle = part.close(idle=True)
    assert idle is not None and idle.windows[(5, "v1")].labels_unknown == 1
    assert not part.has_open_windows  # so notify_at stops asking


def test_the_clock_is_the_slowest_input_partition_until_it_goes_idle() -> None:
    """A backlog reads input partition 1 a day ahead of 0: no row of 0 may count as late."""
    part = PartitionDrift(0, W, grace_ms=0, idle_seconds=10)
    one = np.ones(1, dtype=np.int64)
    for minute in range(5):  # input 1 runs four minutes ahead of input 0
        times, feats, scores = batch(20, (minute + 4) * W)
        part.add_scored(META, times, feats, scores, META.thresholds.decide(scores),
                        inputs=one.repeat(20), now=0.0)
        times, feats, scores = batch(20, minute * W)
        part.add_scored(META, times, feats, scores, META.thresholds.decide(scores),
                        inputs=0 * one.repeat(20), now=0.0)
        assert part.watermark(now=0.0) < (minute + 1) * W
    partial = part.close(now=0.0)
    assert partial is not None and partial.closed_before == 4  # input 0 is in minute 4
    assert sorted(i for i, _ in partial.windows) == [0, 1, 2, 3]
    assert all(c.count == 20 + 20 * (i >= 4) for (i, _), c in partial.windows.items())
    assert part.late_rows == 0
    # input 0 falls silent: after idle_seconds the clock follows input 1 alone
    times, feats, scores = batch(1, 9 * W)
    part.add_scored(META, times, feats, scores, META.thresholds.decide(scores),
                    inputs=one, now=5.0)
    assert part.close(now=5.0) is None
    later = part.close(now=11.0)
    assert later is not None and later.closed_before == 9


def test_an_input_partition_not_heard_from_yet_holds_the_clock_until_idle() -> None:
    part = PartitionDrift(0, W, grace_ms=0, idle_seconds=10, n_inputs=2)
    times, feats, scores = batch(20, 5 * W)
    part.add_scored(META, times, feats, scores, META.thresholds.decide(scores),
                    inputs=np.ones(20, dtype=np.int64), now=0.0)
    assert part.close(now=9.0) is None  # input 0 may still bring minutes 0..4
    partial = part.close(now=10.0)
    assert partial is not None and partial.closed_before == 5
