from __future__ import annotations

import numpy as np
import pytest

from training.report import card_precision_at_k
from training.train import DAY_MS, TrainConfig, choose_thresholds, time_split, undersample


def test_time_split_leaves_label_delay_gaps() -> None:
    t = np.arange(0, 100 * DAY_MS, DAY_MS // 4, dtype=np.int64)
    cfg = TrainConfig(label_delay_days=7)
    s = time_split(t, cfg)
    assert t[s.train].max() < s.bounds["train_end"]
    assert s.bounds["val_start"] - s.bounds["train_end"] == 7 * DAY_MS
    assert s.bounds["test_start"] - s.bounds["val_end"] == 7 * DAY_MS
    assert t[s.train].max() + 7 * DAY_MS <= t[s.val].min() + DAY_MS // 4
    assert set(s.train).isdisjoint(s.val) and set(s.val).isdisjoint(s.test)
    with pytest.raises(ValueError, match="too short"):
        time_split(np.arange(0, 10 * DAY_MS, DAY_MS, dtype=np.int64), cfg)


def test_thresholds_follow_the_policy_and_sit_between_scores() -> None:
    rng = np.random.default_rng(0)
    y = np.zeros(10_000, dtype=bool)
    y[:100] = True
    scores = np.where(y, rng.uniform(0.5, 1.0, y.size), rng.uniform(0.0, 0.8, y.size))
    cfg = TrainConfig(decline_precision=0.9, review_per_day=30)
    th, info = choose_thresholds(scores, y, days=10, cfg=cfg)
    declined = scores >= th.decline
    assert y[declined].mean() >= 0.9 and declined.sum() >= cfg.min_decline_support
    band = (scores >= th.review) & ~declined
    assert band.sum() <= 30 * 10
    assert band.sum() >= 30 * 10 - 1
    assert not np.isin([th.review, th.decline], scores).any()  # never equal to a score


def test_undersample_keeps_all_positives() -> None:
    y = np.zeros(1000, dtype=bool)
    y[::100] = True
    rows = undersample(y, 5, seed=1)
    assert y[rows].sum() == 10 and rows.size == 60 and np.all(np.diff(rows) > 0)


def test_card_precision_counts_cards_per_day() -> None:
    t = np.array([0, 1, 2, DAY_MS, DAY_MS + 1], dtype=np.int64)
    cards = np.array(["a", "a", "b", "a", "b"], dtype=object)
    y = np.array([False, True, False, False, False])
    s = np.array([0.9, 0.1, 0.5, 0.2, 0.3])
    prec, ceiling = card_precision_at_k(s, y, t, cards, k=1)
    assert prec == pytest.approx(0.5)  # day 0: card a (fraud) on top; day 1: b, not fraud
    assert ceiling == pytest.approx(0.5)
