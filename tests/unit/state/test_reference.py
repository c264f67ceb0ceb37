"""Every feature against a brute-force reference over the full event list (spec v2 semantics)."""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from state.reference.card import IDLE_EVICT_MS, haversine_km
from state.replay import replay
from state.spec import FEATURE_NAMES, FEATURES, INDEX, LABEL_DELAY_DAYS, N_FEATURES
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
    mean = float(np.mean(amounts)) if amounts else 0.0
    out["card_amount_ratio_30d"] = (
        txn.amount / mean if mean > 0 else 1.0 + txn.amount if amounts else 1.0)
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
    out["card_zero_count_24h"] = sum(1 for e in win["24h"] if e.amount == 0)
    return out


def merchant_reference(
    txns: list[Transaction], frauds: list[tuple[int, int, int, bool]], newest_hour: int | None,
    txn: Transaction,
) -> dict[str, float]:
    """Merchant features in event time, as the spec defines them: from all of the merchant's
    transactions (``txns``, any order) and its fraud counts ``(transaction time, from,
    until, regular customer)`` (ms; until: when a correction ended it), whatever order they
    were read in. ``newest_hour``: the merchant's newest transaction hour before ``txn``
    (what it still keeps: label hours within 770 hours, transaction days within 41 days)."""
    t, h = txn.event_time, txn.event_time // HOUR
    out: dict[str, float] = {}
    counts = {}
    for k, (size, n) in MERCHANT_WINDOWS.items():
        b = t // size
        counts[k] = sum(1 for e in txns if b - n - 2 < e.event_time // size <= b - 2)
        out[f"merchant_count_{k}"] = counts[k]
    known = h - 2
    live = [(tt, hs // HOUR, fam) for tt, hs, he, fam in frauds
            if hs // HOUR <= known < he // HOUR]
    kept = [x for x in live if newest_hour is None or x[1] > newest_hour - 770]
    for k, hours in FRAUD_HOURS.items():
        f = sum(1 for _, hs, _ in kept if known - hours < hs)
        out[f"merchant_fraud_rate_{k}"] = min(1.0, f / counts[k]) if counts[k] else 0.0
        if k == "7d":
            out["merchant_fraud_labels_7d"] = f
    end = t // DAY - LABEL_DELAY_DAYS
    for k, days in (("1d", 1), ("7d", 7), ("30d", 30)):
        c = sum(1 for e in txns if end - days < e.event_time // DAY <= end)
        f = sum(1 for tt, _, _ in live if end - days < tt // DAY <= end
                and (newest_hour is None or tt // DAY > newest_hour // 24 - 41))
        out[f"merchant_risk_aligned_{k}"] = min(1.0, f / c) if c and f else 0.0
    for k, hours in (("7d", 168), ("30d", 720)):
        out[f"merchant_familiar_fraud_{k}"] = sum(
            1 for _, hs, fam in kept if fam and known - hours < hs)
    return out


def fraud_counts(events: list[Transaction | Label], familiar: dict[str, bool],
                 horizon_days: int = 180, wait_days: int = 35
                 ) -> dict[str, list[tuple[int, int, int, bool]]]:
    """Per merchant, every fraud count ``(transaction time, from, until, regular customer)``.

    The label contract, in event time (transactions at their event time before labels at
    the same time, then stream order): a label joins the first transaction of its id,
    once that is known, while its UTC day is within ``horizon_days`` of the transaction's,
    for the transaction's merchant (never the one the label names); one read before its
    transaction waits (the latest wins) and joins right after it, unless the transaction
    comes ``wait_days`` or more after the first waiting label. The label with the
    latest (label_time, is_fraud) is in force; a fraud counts from the later of its label
    time and its transaction's time until a later not-fraud label.
    """
    never = 1 << 62
    keyed = sorted(((e.event_time if isinstance(e, Transaction) else e.label_time,
                     int(isinstance(e, Label)), i, e) for i, e in enumerate(events)),
                   key=lambda x: x[:3])
    known: dict[str, Transaction] = {}
    waiting: dict[str, tuple[Label, int]] = {}
    current: dict[str, tuple[int, bool]] = {}
    opened: dict[str, list] = {}
    out: dict[str, list[tuple[int, int, int, bool]]] = {}

    def apply(tid: str, lt: int, fraud: bool) -> None:
        x = known[tid]
        now = current.get(tid)
        if now is not None and (lt, fraud) <= now:
            return
        current[tid] = (lt, fraud)
        if now is not None and now[1] == fraud:
            return
        at = max(lt, x.event_time)
        if fraud:
            opened[tid] = [x.event_time, at, never, familiar[tid]]
            out.setdefault(x.merchant_id, []).append(opened[tid])  # type: ignore[arg-type]
        elif tid in opened:
            opened.pop(tid)[2] = at

    for _, _, _, e in keyed:
        if isinstance(e, Transaction):
            if e.transaction_id in known:
                continue
            known[e.transaction_id] = e
            w = waiting.pop(e.transaction_id, None)
            if w is not None:
                if e.event_time // DAY < w[1] // DAY + wait_days:
                    apply(e.transaction_id, w[0].label_time, w[0].is_fraud)
                else:
                    waiting[e.transaction_id] = w  # expired: it never joins
            continue
        x = known.get(e.transaction_id)
        if x is not None and e.label_time // DAY < x.event_time // DAY + horizon_days:
            apply(e.transaction_id, e.label_time, e.is_fraud)
            continue
        w = waiting.get(e.transaction_id)
        if w is None:
            waiting[e.transaction_id] = (e, e.label_time)
        elif (e.label_time, e.is_fraud) > (w[0].label_time, w[0].is_fraud):
            waiting[e.transaction_id] = (e, w[1])
    return {m: [tuple(c) for c in counts] for m, counts in out.items()}  # type: ignore[misc]


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
    """Per transaction: expected features by name, and the brute 30-d std (for z checks).

    Card features follow the stream order of the card; merchant features event time
    (everything the merchant will ever see, filtered by time); labels: the label contract
    (:func:`fraud_counts`).
    """
    card_hist: dict[str, list[Transaction]] = {}
    m_txns: dict[str, list[Transaction]] = {}
    seen: set[str] = set()
    familiar: dict[str, bool] = {}
    cards: list[tuple[Transaction, dict[str, float], float]] = []
    for e in events:
        if isinstance(e, Label) or e.transaction_id in seen:
            continue
        seen.add(e.transaction_id)
        hist = card_hist.setdefault(e.card_id, [])
        if hist and e.event_time - max(x.event_time for x in hist) > IDLE_EVICT_MS:
            hist.clear()
        exp = card_reference(hist, e)
        amounts = [x.amount for x in hist if in_window(x.event_time, max(
            [e.event_time] + [y.event_time for y in hist]), DAY, 30)]
        std = float(np.std(amounts)) if amounts else 0.0
        if std > 1e-3:
            exp["card_amount_zscore_30d"] = (e.amount - float(np.mean(amounts))) / std
        cards.append((e, exp, std))
        hist.append(e)
        m_txns.setdefault(e.merchant_id, []).append(e)
        familiar[e.transaction_id] = exp["card_new_merchant_30d"] == 0.0
    counts = fraud_counts(events, familiar)
    # what the merchant still keeps when a transaction reads: behind its newest transaction
    # scored before it in event time (ties: stream order)
    by_time = sorted(cards, key=lambda c: c[0].event_time)
    rank = {c[0].transaction_id: r for r, c in enumerate(by_time)}

    def newest(m: str, before: int) -> int | None:
        earlier = [c[0].event_time // HOUR for c in by_time[:before] if c[0].merchant_id == m]
        return max(earlier) if earlier else None

    out = []
    for e, exp, std in cards:
        exp |= merchant_reference(m_txns[e.merchant_id], counts.get(e.merchant_id, []),
                                  newest(e.merchant_id, rank[e.transaction_id]), e)
        exp |= context_reference(e)
        out.append((exp, std))
    return out


def eur(txn: Transaction) -> float:
    return txn.amount


def check(events: list[Transaction | Label]) -> None:
    got = [vec for _, vec in replay(events, amount_of=eur)]
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
    """Transactions (unique ids, some late) with labels anywhere: before or after their txn."""
    n = draw(st.integers(1, 40))
    t = T0
    events: list[Transaction | Label] = []
    txns: list[Transaction] = []
    for i in range(n):
        t += draw(GAPS) + draw(st.integers(0, 120_000))
        if i and draw(st.integers(0, 4)) == 0:
            ahead = draw(st.integers(0, 3))  # a label may be read before its transaction
            target_id = f"t{draw(st.integers(0, i + ahead))}"
            merchant = draw(st.sampled_from(["m1", "m2", "m3"]))
            match = [x for x in txns if x.transaction_id == target_id]
            if match:
                merchant = match[0].merchant_id
            events.append(Label(transaction_id=target_id, card_id="a", merchant_id=merchant,
                                is_fraud=draw(st.booleans()), label_time=t))
            continue
        late = draw(st.sampled_from([0, 0, 0, 40_000, 2 * HOUR, 3 * DAY]))
        located = draw(st.booleans())
        txn = Transaction(
            transaction_id=f"t{i}",
            card_id=draw(st.sampled_from(["a", "b"])),
            merchant_id=draw(st.sampled_from(["m1", "m2", "m3"])),
            amount=draw(st.sampled_from([0.0, 1.0, 4.5, 20.0, 20.0, 350.25, 9_999.0])),
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
            st.one_of(st.just(0.0), st.floats(0.01, 10_000_000.0)),
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
    for _, vec in replay(events, amount_of=eur):
        assert np.isfinite(vec).all()


def test_spec_is_consistent() -> None:
    assert len(set(FEATURE_NAMES)) == N_FEATURES
    assert all(f.description and math.isfinite(f.neutral) for f in FEATURES)
    txn = Transaction(transaction_id="t", card_id="c", merchant_id="m", amount=10.0,
                      currency="EUR", event_time=T0)
    ((_, vec),) = list(replay([txn], amount_of=eur))
    # a first transaction with no optional fields shows every history feature's neutral value
    for f in FEATURES:
        if f.name.startswith(("card_", "merchant_")):
            assert vec[INDEX[f.name]] == np.float32(f.neutral), f.name
