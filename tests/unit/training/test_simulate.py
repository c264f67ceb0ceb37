from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pytest

from topics.contracts import Transaction
from topics.currency import MINOR_UNITS, default_rates
from topics.validation import Rejection, TransactionDecoder
from training.history import from_frame, load_history, write_history
from training.simulate import _COUNTRIES, SCENARIOS, SimConfig, _money, _world, main, simulate

CFG = SimConfig(n_transactions=6_000, n_cards=200, days=20, seed=3, fraud_rate=0.03)


def test_deterministic_for_a_seed() -> None:
    a, b = simulate(CFG), simulate(CFG)
    pd.testing.assert_frame_equal(a, b)
    c = simulate(SimConfig(**{**CFG.__dict__, "seed": 4}))
    assert not a["amount"].equals(c["amount"])


def test_scenarios_labels_and_contract(tmp_path: Path) -> None:
    h = simulate(CFG)
    assert set(h["scenario"].dropna().unique()) == set(SCENARIOS)
    fraud = h["scenario"].notna().to_numpy()
    # labels never precede the transaction; labelled fraud is a subset of true fraud
    assert (h["label_time"] >= h["event_time"]).all()
    assert not (h["is_fraud"].to_numpy() & ~fraud).any()
    assert 0.02 < fraud.mean() < 0.045
    assert h["event_time"].is_monotonic_increasing
    assert h["transaction_id"].is_unique
    # card testing: tiny amounts then one large one, within minutes
    ct = h[h["scenario"] == "card_testing"]
    assert (ct["amount"] < 5 * 38).mean() > 0.6 and ct["channel"].isin(["ecom", "moto"]).all()
    # impossible travel is card present
    assert h.loc[h["scenario"] == "impossible_travel", "lat"].notna().all()
    # every row passes the transactions contract (through the validating loader)
    path = tmp_path / "h.parquet"
    write_history(h, path)
    loaded = load_history(path)
    assert len(loaded) == len(h)
    assert np.array_equal(loaded.is_fraud, h["is_fraud"].to_numpy())
    assert loaded.scenario == from_frame(h).scenario


def test_cli_writes_parquet(tmp_path: Path, capsys: object) -> None:
    out = tmp_path / "sim.parquet"
    assert main(["-n", "3000", "--days", "10", "--seed", "1", "--out", str(out)]) == 0
    df = pd.read_parquet(out)
    assert len(df) >= 2900 and {"scenario", "is_fraud", "label_time"} <= set(df.columns)
    assert {"billing_amount", "billing_currency"} <= set(df.columns)


RATES = default_rates()
MULTI = SimConfig(n_transactions=40_000, n_cards=800, days=30, seed=5, fraud_rate=0.02)


@pytest.fixture(scope="module")
def multi() -> pd.DataFrame:
    return simulate(MULTI)


def rows(h: pd.DataFrame) -> list[Transaction]:
    """Every row as the wire contract, billing fields included."""
    cols = ["transaction_id", "card_id", "merchant_id", "amount", "currency", "billing_amount",
            "billing_currency", "event_time", "mcc", "channel", "entry_mode", "country", "lat",
            "lon", "device_id"]
    out = []
    for rec in h[cols].to_dict("records"):
        kw = {k: v for k, v in rec.items() if v is not None and v is not pd.NA
              and not (isinstance(v, float) and np.isnan(v))}
        out.append(Transaction(**kw))
    return out


def test_every_row_with_its_billing_fields_passes_validation(multi: pd.DataFrame) -> None:
    decoder = TransactionDecoder()
    now = int(multi["event_time"].max())
    for txn in rows(multi):
        result = decoder.decode(msgspec.json.encode(txn), now)
        assert not isinstance(result, Rejection), (txn, result)


def test_currencies_with_0_2_and_3_decimals_rounded_to_their_minor_units(
    multi: pd.DataFrame,
) -> None:
    digits = multi["currency"].map(MINOR_UNITS)
    assert set(digits) == {0, 2, 3}
    assert {"JPY", "KRW", "BHD", "JOD", "EUR", "USD"} <= set(multi["currency"])
    minor = multi["amount"] * 10.0 ** digits
    assert np.allclose(minor, np.round(minor), rtol=0, atol=1e-6)
    jpy = multi.loc[multi["currency"] == "JPY", "amount"]
    assert (jpy == np.round(jpy)).all() and jpy.max() > 1000


def test_billing_is_in_the_card_currency_when_it_pays_in_another(multi: pd.DataFrame) -> None:
    billed = multi[multi["billing_currency"].notna()]
    assert 0.02 < len(billed) / len(multi) < 0.3
    assert (billed["billing_currency"] != billed["currency"]).all()
    # one home currency per card: every billing currency of a card is the same
    assert (billed.groupby("card_id")["billing_currency"].nunique() == 1).all()
    home = billed.groupby("card_id")["billing_currency"].first()
    unbilled = multi[multi["billing_currency"].isna() & multi["card_id"].isin(home.index)]
    assert (unbilled["currency"].to_numpy() == home[unbilled["card_id"]].to_numpy()).all()
    # billing = local amount by the rate table, plus a markup of 0..3 %, up to rounding
    local = billed["amount"] / billed["currency"].map(RATES.per_reference)
    bill = billed["billing_amount"] / billed["billing_currency"].map(RATES.per_reference)
    paid = billed["amount"] > 1.0
    ratio = bill[paid] / local[paid]
    assert ratio.between(0.99, 1.04).all(), ratio.describe()
    assert ratio.median() > 1.0


def test_the_same_true_value_gives_the_same_reference_amount_in_every_currency() -> None:
    w = _world(SimConfig(n_cards=len(_COUNTRIES) * 4, seed=1), np.random.default_rng(1))
    merchants = np.array([pool[0] for pool in w.m_pos_by_country])
    for value in (0.0, 0.5, 27.5, 1234.56):
        card = np.zeros(merchants.size, dtype=np.int64)
        amount, country, _, _ = _money(w, card, merchants, np.full(merchants.size, value),
                                       np.zeros(merchants.size, dtype=np.int64))
        for amt, c in zip(amount, country, strict=True):
            code = _COUNTRIES[c][1]
            half_minor = 0.5 / 10 ** MINOR_UNITS[code] / RATES.per_reference[code]
            assert abs(RATES.to_reference(float(amt), code) - value) <= half_minor * 1.000001


def test_zero_value_verifications_legit_and_in_card_testing(multi: pd.DataFrame) -> None:
    zero = multi[multi["amount"] == 0.0]
    legit = zero[zero["scenario"].isna()]
    testing = zero[zero["scenario"] == "card_testing"]
    assert len(legit) > 20 and len(testing) > 5
    assert (zero["channel"].isin(["ecom", "moto"])).all()
    # a legitimate verification is followed within 2 minutes by a purchase there
    purchases = multi[(multi["amount"] > 0) & multi["scenario"].isna()]
    after = legit.merge(purchases, on=["card_id", "merchant_id"], suffixes=("", "_p"))
    gap = after["event_time_p"] - after["event_time"]
    followed = after[(gap > 0) & (gap <= 120_000)]["transaction_id"].nunique()
    assert followed / len(legit) > 0.9
    # card testing with zero-value authorisations spans several merchants, then a large one
    per_card = testing.groupby("card_id")["merchant_id"].nunique()
    assert (per_card >= 2).mean() > 0.5
