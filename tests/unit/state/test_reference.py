"""Every feature against a brute-force reference over the full event list (spec v1 semantics)."""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from state.card import IDLE_EVICT_MS, haversine_km
from state.replay import replay
from state.spec import FEATURE_NAMES, FEATURES, INDEX, N_FEATURES
from topics.contracts import Label, Transaction

MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
T0 = 1_700_000_000_000

CARD_WINDOWS = {  # name suffix -> (bucket ms, buckets)
    "10m": (MIN, 10), "1h": (MIN, 60), "24h": (15 * MIN, 96), "7d": (6 * HOUR, 28),
    "30d": (DAY, 30),
}
MERCHANT_WINDOWS = {"1d": (HOUR, 24), "7d": (6 * HOUR, 28), "30d": (DAY, 30)}
FRAUD_HOURS = {"1d": 24, "7d": 168, "30d": 720}


def in_window(t: int, ref: int, bucket: int, n: int) -> bool:
    return t // bucket > ref // bucket - n


def latest(items: list[Transaction], has: str) -> Transaction | None:
    best = None
    for e in items:  # ties: the later arrival wins
        if getattr(e, has) is not None and (best is None or e.event_time >= best.event_time):
            best = e
    return best


def card_reference(hist: list[Transaction], txn: Transaction) -> dict[str, float]:
    t = txn.event_time
    ref = max([t] + [e.event_time for e in hist])
    out: dict[str, float] = {}
    win = {k: [e for e in hist if in_window(e.event_time, ref, *bw)]
           for k, bw in CARD_WINDOWS.items()}
    for k, es in win.items():
        out[f"card_count_{k}"] = len(es)
    for k in ("1h", "24h"):
        out[f"card_amount_sum_{k}"] = sum(e.amount for e in win[k])
    for k in ("24h", "7d", "30d"):
        es = win[k]
        out[f"card_amount_mean_{k}"] = sum(e.amount for e in es) / len(es) if es else 0.0
    amounts = [e.amount for e in win["30d"]]
    out["card_amount_std_30d"] = float(np.std(amounts)) if amounts else 0.0
    out["card_amount_ratio_30d"] = txn.amount / float(np.mean(amounts)) if amounts else 1.0
    out["card_seconds_since_prev"] = (
        max(0, t - max(e.event_time for e in hist)) / 1000 if hist else 2_592_000.0
    )
    for k, w in (("1h", HOUR), ("24h", DAY)):
        out[f"card_distinct_merchants_{k}"] = len(
            {e.merchant_id for e in hist if e.event_time > ref - w})
    out["card_distinct_countries_24h"] = len(
        {e.country for e in hist if e.country and e.event_time > ref - DAY})
    out["card_new_merchant_30d"] = float(not any(
        e.merchant_id == txn.merchant_id and e.event_time > ref - 30 * DAY for e in hist))
    out["card_small_count_10m"] = sum(1 for e in win["10m"] if e.amount < 5)
    prev = latest(hist, "lat")
    speed = 0.0
    if prev is not None and txn.lat is not None and txn.lon is not None:
        assert prev.lat is not None and prev.lon is not None
        hours = max(abs(t - prev.event_time) / HOUR, 1 / 60)
        speed = haversine_km(prev.lat, prev.lon, txn.lat, txn.lon) / hours
    out["card_travel_speed_kmh"] = speed
    prev_c = latest(hist, "country")
    counts = Counter(e.country for e in hist if e.country)
    home = min(counts, key=lambda c: (-counts[c], c)) if counts else None
    out["card_country_changed"] = float(
        txn.country is not None and prev_c is not None and prev_c.country != txn.country)
    out["card_cross_border"] = float(txn.country is not None and home not in (None, txn.country))
    return out


def merchant_reference(
    txns: list[Transaction], frauds: list[int], txn: Transaction
) -> dict[str, float]:
    t, h = txn.event_time, txn.event_time // HOUR
    ref_t = max([t] + [e.event_time for e in txns])
    ref_h = max([h] + [e.event_time // HOUR for e in txns] + [f // HOUR for f in frauds])
    out: dict[str, float] = {}
    for k, bw in MERCHANT_WINDOWS.items():
        c = sum(1 for e in txns if in_window(e.event_time, ref_t, *bw))
        f = sum(1 for lt in frauds if ref_h - FRAUD_HOURS[k] < lt // HOUR < h)
        out[f"merchant_count_{k}"] = c
        out[f"merchant_fraud_rate_{k}"] = min(1.0, f / c) if c else 0.0
    return out


def context_reference(txn: Transaction) -> dict[str, float]:
    dt = datetime.fromtimestamp(txn.event_time / 1000, UTC)
    return {
        "amount": txn.amount, "log_amount": math.log1p(txn.amount),
        "hour_of_day": dt.hour, "day_of_week": dt.weekday(),
        "is_weekend": float(dt.weekday() >= 5), "is_night": float(dt.hour < 6),
        "channel": [None, "pos", "ecom", "atm", "moto"].index(txn.channel),
        "entry_mode": [None, "chip", "contactless", "swipe", "manual", "ecom"].index(
            txn.entry_mode),
    }


def reference(events: list[Transaction | Label]) -> list[tuple[dict[str, float], float]]:
    """Per transaction: expected features by name, and the brute 30-d std (for z checks)."""
    card_hist: dict[str, list[Transaction]] = {}
    m_txns: dict[str, list[Transaction]] = {}
    m_frauds: dict[str, list[int]] = {}
    labelled: set[str] = set()

    def m_reset(m: str, t: int) -> None:
        times = [e.event_time for e in m_txns.get(m, [])] + m_frauds.get(m, [])
        if times and t - max(times) > IDLE_EVICT_MS:
            m_txns[m], m_frauds[m] = [], []

    out = []
    for e in events:
        if isinstance(e, Label):
            if e.transaction_id not in labelled:
                labelled.add(e.transaction_id)
                if e.is_fraud:
                    m_reset(e.merchant_id, e.label_time)
                    m_frauds.setdefault(e.merchant_id, []).append(e.label_time)
            continue
        hist = card_hist.setdefault(e.card_id, [])
        if hist and e.event_time - max(x.event_time for x in hist) > IDLE_EVICT_MS:
            hist.clear()
        m_reset(e.merchant_id, e.event_time)
        exp = card_reference(hist, e)
        exp |= merchant_reference(m_txns.get(e.merchant_id, []), m_frauds.get(e.merchant_id, []), e)
        exp |= context_reference(e)
        amounts = [x.amount for x in hist if in_window(x.event_time, max(
            [e.event_time] + [y.event_time for y in hist]), DAY, 30)]
        std = float(np.std(amounts)) if amounts else 0.0
        if std > 1e-3:
            exp["card_amount_zscore_30d"] = (e.amount - float(np.mean(amounts))) / std
        out.append((exp, std))
        hist.append(e)
        m_txns.setdefault(e.merchant_id, []).append(e)
    return out


def check(events: list[Transaction | Label]) -> None:
    got = [vec for _, vec in replay(events)]
    expected = reference(events)
    assert len(got) == len(expected)
    for vec, (exp, std) in zip(got, expected, strict=True):
        assert vec.dtype == np.float32 and vec.shape == (N_FEATURES,)
        assert np.isfinite(vec).all()
        for name, value in exp.items():
            tol = 1e-3 if name == "card_amount_std_30d" else 1e-5
            assert math.isclose(float(vec[INDEX[name]]), value, rel_tol=tol, abs_tol=tol), (
                name, float(vec[INDEX[name]]), value)
        if std <= 1e-3:
            assert "card_amount_zscore_30d" not in exp


GAPS = st.sampled_from([0, 999, 30_000, 61_000, 600_000, 3_600_000, 6 * HOUR, 2 * DAY, 8 * DAY,
                        32 * DAY])


@st.composite
def event_lists(draw: st.DrawFn) -> list[Transaction | Label]:
    n = draw(st.integers(1, 40))
    t = T0
    events: list[Transaction | Label] = []
    txns: list[Transaction] = []
    for i in range(n):
        t += draw(GAPS) + draw(st.integers(0, 120_000))
        if txns and draw(st.integers(0, 4)) == 0:
            target = draw(st.sampled_from(txns))
            events.append(Label(transaction_id=target.transaction_id, card_id=target.card_id,
                                merchant_id=target.merchant_id, is_fraud=draw(st.booleans()),
                                label_time=t))
            continue
        late = draw(st.sampled_from([0, 0, 0, 40_000, 2 * HOUR, 3 * DAY]))
        located = draw(st.booleans())
        txn = Transaction(
            transaction_id=f"t{draw(st.integers(0, i))}",  # duplicate ids on purpose
            card_id=draw(st.sampled_from(["a", "b"])),
            merchant_id=draw(st.sampled_from(["m1", "m2", "m3"])),
            amount=draw(st.sampled_from([1.0, 4.5, 20.0, 20.0, 350.25, 9_999.0])),
            currency="EUR",
            event_time=t - late,
            country=draw(st.sampled_from(["FR", "DE", "US", None])),
            lat=draw(st.floats(-89, 89)) if located else None,
            lon=draw(st.floats(-179, 179)) if located else None,
            channel=draw(st.sampled_from([None, "pos", "ecom", "atm", "moto"])),
            entry_mode=draw(st.sampled_from([None, "chip", "contactless", "manual"])),
        )
        txns.append(txn)
        events.append(txn)
    return events


@settings(max_examples=250, deadline=None)
@given(event_lists())
def test_features_match_brute_force(events: list[Transaction | Label]) -> None:
    check(events)


def test_seeded_long_stream_matches_brute_force(events_factory) -> None:  # type: ignore[no-untyped-def]
    check(events_factory(7, 400))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 40 * DAY),
            st.floats(0.01, 10_000_000.0),
            st.one_of(st.none(), st.tuples(st.floats(-90, 90), st.floats(-180, 180))),
        ),
        min_size=1, max_size=30,
    )
)
def test_never_nan_or_inf(rows: list[tuple[int, float, tuple[float, float] | None]]) -> None:
    events: list[Transaction | Label] = [
        Transaction(transaction_id=f"t{i}", card_id="c", merchant_id=f"m{i % 3}", amount=amount,
                    currency="EUR", event_time=T0 + dt, lat=loc[0] if loc else None,
                    lon=loc[1] if loc else None, country="FR" if i % 2 else None)
        for i, (dt, amount, loc) in enumerate(rows)
    ]
    for _, vec in replay(events):
        assert np.isfinite(vec).all()


def test_spec_is_consistent() -> None:
    assert len(set(FEATURE_NAMES)) == N_FEATURES
    assert all(f.description and math.isfinite(f.neutral) for f in FEATURES)
    txn = Transaction(transaction_id="t", card_id="c", merchant_id="m", amount=10.0,
                      currency="EUR", event_time=T0)
    ((_, vec),) = list(replay([txn]))
    # a first transaction with no optional fields shows every history feature's neutral value
    for f in FEATURES:
        if f.name.startswith(("card_", "merchant_")):
            assert vec[INDEX[f.name]] == np.float32(f.neutral), f.name
