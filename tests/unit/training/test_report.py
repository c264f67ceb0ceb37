"""Evaluation metrics against hand-made examples and brute-force references."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from training.report import (
    DAY_MS,
    card_precision_at_k,
    card_precision_excl_detected,
    model_metrics,
)


def _brute_force_cp(scores: np.ndarray, y: np.ndarray, t: np.ndarray, cards: np.ndarray, k: int,
                    remove_detected: bool) -> float:
    """The handbook's loop, written out with dicts: no pandas, no sorting tricks."""
    detected: set[Any] = set()
    precs = []
    for day in sorted(set((t // DAY_MS).tolist())):
        best: dict[Any, float] = {}
        fraud: dict[Any, bool] = {}
        for i in np.flatnonzero(t // DAY_MS == day):
            c = cards[i]
            if remove_detected and c in detected:
                continue
            best[c] = max(best.get(c, -1.0), float(scores[i]))
            fraud[c] = fraud.get(c, False) or bool(y[i])
        ranked = sorted(best, key=lambda c: -best[c])[:k]
        hits = [c for c in ranked if fraud[c]]
        precs.append(len(hits) / k)
        if remove_detected:
            detected.update(hits)
    return float(np.mean(precs))


def test_card_precision_counts_cards_per_day() -> None:
    t = np.array([0, 1, 2, DAY_MS, DAY_MS + 1], dtype=np.int64)
    cards = np.array(["a", "a", "b", "a", "b"], dtype=object)
    y = np.array([False, True, False, False, False])
    s = np.array([0.9, 0.1, 0.5, 0.2, 0.3])
    prec, ceiling = card_precision_at_k(s, y, t, cards, k=1)
    assert prec == pytest.approx(0.5)  # day 0: card a (fraud) on top; day 1: b, not fraud
    assert ceiling == pytest.approx(0.5)


def test_detected_cards_are_removed_on_later_days_hand_made() -> None:
    # day 0: a (max 0.9, fraud that day) beats b -> hit, a detected
    # day 1: a would top again (fraud) but is removed; b (fraud) tops -> hit, b detected
    # day 2: a and b removed; d (legit, 0.7) beats c (fraud, 0.1) -> miss
    rows = [  # (day, card, score, fraud)
        (0, "a", 0.9, False), (0, "a", 0.2, True), (0, "b", 0.5, False),
        (1, "a", 0.95, True), (1, "b", 0.6, True), (1, "c", 0.3, False),
        (2, "a", 0.99, True), (2, "b", 0.8, False), (2, "c", 0.1, True), (2, "d", 0.7, False),
    ]
    t = np.array([d * DAY_MS + i for i, (d, *_) in enumerate(rows)], dtype=np.int64)
    cards = np.array([r[1] for r in rows], dtype=object)
    s = np.array([r[2] for r in rows])
    y = np.array([r[3] for r in rows])
    cp = card_precision_excl_detected(s, y, t, cards, k=1)
    assert cp.per_day == (1.0, 1.0, 0.0)
    assert cp.mean == pytest.approx(2 / 3)
    assert cp.ceiling == pytest.approx(1.0)  # every day an undetected fraudulent card remains
    assert cp.detected_cards == 2 and cp.days == (0, 1, 2)
    assert card_precision_at_k(s, y, t, cards, k=1)[0] == pytest.approx(1.0)  # a every day


@pytest.mark.parametrize("k", [1, 3, 10])
def test_card_precision_matches_brute_force(k: int) -> None:
    rng = np.random.default_rng(k)
    n = 3000
    t = np.sort(rng.integers(0, 12 * DAY_MS, n)).astype(np.int64)
    cards = np.array([f"c{i}" for i in rng.integers(0, 150, n)], dtype=object)
    y = rng.random(n) < 0.04
    s = rng.random(n) + 0.1 * y  # continuous: no ties
    cp = card_precision_excl_detected(s, y, t, cards, k)
    assert cp.mean == pytest.approx(_brute_force_cp(s, y, t, cards, k, remove_detected=True))
    plain = card_precision_at_k(s, y, t, cards, k)[0]
    assert plain == pytest.approx(_brute_force_cp(s, y, t, cards, k, remove_detected=False))


def test_metrics_take_one_threshold_per_row_and_split_by_scenario() -> None:
    s = np.array([0.9, 0.6, 0.4, 0.3, 0.2, 0.1])
    y = np.array([True, True, True, False, False, False])
    scen = np.array(["x", "x", "y", None, None, None], dtype=object)
    t = np.arange(6, dtype=np.int64)
    cards = np.array(list("abcdef"), dtype=object)
    review = np.array([0.5, 0.5, 0.5, 0.15, 0.15, 0.15])  # two blocks, own thresholds
    decline = np.array([0.8, 0.8, 0.8, 0.5, 0.5, 0.5])
    m = model_metrics(s, y, t, cards, scen, review, decline, daily=True)
    assert m["review_alerts"] == 4 and m["review_precision"] == pytest.approx(0.5)
    assert m["review_recall"] == pytest.approx(2 / 3)
    assert m["decline_alerts"] == 1 and m["decline_precision"] == 1.0
    assert m["scenario_recall"]["x"] == {"rows": 2, "recall_review": 1.0,
                                         "recall_decline": 0.5, "mean_score": 0.75}
    assert m["scenario_recall"]["y"]["recall_review"] == 0.0
    assert list(m["card_precision_excl_detected_per_day"]) == ["1970-01-01"]
