"""Unrated amounts (issue 23): neutral amount features; the card counts them, learns no amount.

A transaction whose amount no rate converts reaches the feature path as NaN
(:data:`topics.currency.UNRATED`). Held against the per-transaction reference and
against the card's state before and after it, with the real card kernel.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from state.features import CARD_WIDTH, card_features, context_features
from state.inputs import NEUTRAL_AMOUNT, FeatureInputs, TxnInput
from state.kernels.card import transcode
from state.reference.card import CardState
from state.reference.steps import card_step
from state.reference.steps import context_features as reference_context
from state.spec import FEATURES, INDEX
from topics.contracts import Transaction
from topics.currency import UNRATED, default_rates, reference_amount

T0 = 1_795_953_300_000
MINUTE = 60_000
#: Card-group columns that describe the card's amount windows (history, read before a row).
WINDOW_AMOUNT_FEATURES = ("card_amount_sum_1h", "card_amount_sum_24h", "card_amount_mean_24h",
                          "card_amount_mean_7d", "card_amount_mean_30d", "card_amount_std_30d",
                          "card_small_count_10m", "card_zero_count_24h")
VELOCITY = ("card_count_10m", "card_count_1h", "card_count_24h", "card_count_7d",
            "card_count_30d")


def txn(i: int, amount: float, currency: str = "EUR", minutes: int = 0,
        merchant: str = "m1") -> Transaction:
    return Transaction(transaction_id=f"t{i}", card_id="card-vnd", merchant_id=merchant,
                       amount=amount, currency=currency, event_time=T0 + minutes * MINUTE,
                       country="VN", channel="pos")


def run(txns: list[Transaction], state: bytes | None = None) -> tuple[np.ndarray, bytes]:
    """Card rows of ``txns`` (one card) and its state after them, as the card store runs it."""
    rates = default_rates()
    inputs = FeatureInputs.of(txns, [reference_amount(t, rates) for t in txns])
    rows, (new,) = card_features([state], np.zeros(len(txns), dtype=np.int64),
                                 inputs.for_card_windows())
    return rows, new


HISTORY = [txn(i, a, minutes=i) for i, a in enumerate([12.5, 40.0, 3.2, 0.0, 95.0])]


def test_unrated_inputs_carry_the_spec_neutral_and_a_flag() -> None:
    vnd = txn(9, 2_600_000.0, "VND", 10)
    inputs = FeatureInputs.of([HISTORY[0], vnd], [12.5, UNRATED])
    assert inputs.rated.tolist() == [True, False]
    assert inputs.amount.tolist() == [12.5, NEUTRAL_AMOUNT]
    assert NEUTRAL_AMOUNT == FEATURES[INDEX["amount"]].neutral == 0.0
    assert inputs.reference_amount[0] == 12.5 and math.isnan(inputs.reference_amount[1])
    windows = inputs.for_card_windows()
    assert windows.amount[0] == 12.5 and math.isnan(windows.amount[1])
    # the model's amount inputs are the neutrals: amount 0, log_amount 0
    context = context_features(inputs)
    assert context[1, 0] == 0.0 and context[1, 1] == 0.0
    assert np.isfinite(context).all()
    # rows keep their flag through take/slice/concat (the stages move rows so)
    assert inputs.take(np.array([1, 0])).rated.tolist() == [False, True]
    assert FeatureInputs.concat([inputs.slice(1, 2), inputs]).rated.tolist() == [
        False, True, False]
    # a fully rated batch is handed on as it is (no copy on the hot path)
    rated = FeatureInputs.of(HISTORY, [t.amount for t in HISTORY])
    assert rated.for_card_windows() is rated and rated.reference_amount is rated.amount


def test_an_unrated_row_leaves_the_card_amount_windows_unchanged() -> None:
    _, before = run(HISTORY)
    vnd = txn(9, 2_600_000.0, "VND", 6, merchant="m-hanoi")
    (row,), after = run([vnd], before)
    # its own amount features are the neutrals, whatever the card's history
    assert row[INDEX["card_amount_ratio_30d"]] == FEATURES[INDEX["card_amount_ratio_30d"]].neutral
    assert row[INDEX["card_amount_zscore_30d"]] == 0.0
    assert np.isfinite(row).all()
    # the next rated purchase sees exactly the amount windows it would without the VND row
    probe = txn(10, 60.0, minutes=8)
    (with_vnd,), _ = run([probe], after)
    (without,), _ = run([probe], before)
    for name in (*WINDOW_AMOUNT_FEATURES, "card_amount_ratio_30d", "card_amount_zscore_30d"):
        assert with_vnd[INDEX[name]] == without[INDEX[name]], name
    assert with_vnd[INDEX["card_amount_sum_1h"]] == pytest.approx(150.7, rel=1e-6)
    # but it is a transaction of the card: velocity counts it, recency and merchants see it
    for name in VELOCITY:
        assert with_vnd[INDEX[name]] == without[INDEX[name]] + 1, name
    assert with_vnd[INDEX["card_count_1h"]] == len(HISTORY) + 1
    assert with_vnd[INDEX["card_seconds_since_prev"]] == 120.0  # since the VND row
    assert without[INDEX["card_seconds_since_prev"]] == 240.0
    hanoi = txn(11, 20.0, minutes=9, merchant="m-hanoi")  # the VND row's merchant is known
    assert run([hanoi], after)[0][0, INDEX["card_new_merchant_30d"]] == 0.0
    assert run([hanoi], before)[0][0, INDEX["card_new_merchant_30d"]] == 1.0


def test_an_unrated_zero_value_authorisation_is_a_zero_value_authorisation() -> None:
    zero = txn(9, 0.0, "VND", 6)
    assert reference_amount(zero, default_rates()) == 0.0
    _, before = run(HISTORY)
    _, after = run([zero], before)
    (probe,), _ = run([txn(10, 60.0, minutes=8)], after)
    (base,), _ = run([txn(10, 60.0, minutes=8)], before)
    assert probe[INDEX["card_zero_count_24h"]] == base[INDEX["card_zero_count_24h"]] + 1


@pytest.mark.parametrize("seed", range(4))
def test_kernel_equals_the_reference_with_unrated_rows(seed: int) -> None:
    rng = random.Random(seed)
    txns = [txn(i, rng.choice([0.0, 3.0, 12.5, rng.random() * 500]),
                rng.choice(["EUR", "EUR", "VND", "COP"]), i * rng.randint(1, 400),
                f"m{rng.randint(0, 9)}") for i in range(400)]
    rates = default_rates()
    amounts = [reference_amount(t, rates) for t in txns]
    assert any(math.isnan(a) for a in amounts) and not all(math.isnan(a) for a in amounts)
    card = CardState()
    expected = np.array([card_step(card, TxnInput(t.event_time, a, t.merchant_id, t.country,
                                                  t.lat, t.lon, t.channel, t.entry_mode))
                         for t, a in zip(txns, amounts, strict=True)], dtype=np.float32)
    got, state = run(txns)
    assert got.shape == (len(txns), CARD_WIDTH) and np.isfinite(got).all()
    assert np.array_equal(expected.view(np.uint32), got.view(np.uint32))
    assert card.encode() == transcode([state], to_wide=True)[0]
    context = context_features(FeatureInputs.of(txns, amounts))
    ref = np.array([reference_context(TxnInput(t.event_time, a, t.merchant_id, None, None,
                                               None, t.channel, t.entry_mode))
                    for t, a in zip(txns, amounts, strict=True)], dtype=np.float32)
    assert np.array_equal(ref.view(np.uint32), context.view(np.uint32))


def test_a_burst_of_unrated_transactions_shows_in_velocity_not_in_amounts() -> None:
    # card testing in a currency without a rate must not hide from the velocity features
    burst = [txn(20 + i, 10_000.0 * (i + 1), "VND", 6) for i in range(8)]
    _, before = run(HISTORY)
    _, after = run(burst, before)
    probe = txn(30, 60.0, minutes=7)
    (seen,), _ = run([probe], after)
    (base,), _ = run([probe], before)
    assert seen[INDEX["card_count_10m"]] == base[INDEX["card_count_10m"]] + 8
    assert seen[INDEX["card_amount_mean_24h"]] == base[INDEX["card_amount_mean_24h"]]
    assert seen[INDEX["card_amount_std_30d"]] == base[INDEX["card_amount_std_30d"]]
    # a card whose only history is unrated has no amount history: ratio 1, mean 0
    (fresh,), _ = run([probe], run(burst)[1])
    assert fresh[INDEX["card_count_10m"]] == 8 and fresh[INDEX["card_amount_mean_30d"]] == 0.0
    assert fresh[INDEX["card_amount_ratio_30d"]] == 1.0
