"""Seeded, vectorised card-transaction simulator with labelled fraud scenarios and late labels.

The world: cards with a home country, currency and location, a spending level,
favourite merchants, a preferred time of day and one or two devices; merchants
with an MCC, a location, a channel (point of sale, e-commerce, ATM) and the
currency of their country. Legitimate spending follows a diurnal and weekly
rhythm, mostly at favourite merchants, with trips abroad, rare big legitimate
purchases and zero-value account verifications (amount 0) before some
e-commerce purchases.

Money: every amount is drawn as a true value in EUR and converted with the
committed rate table (:func:`topics.currency.default_rates`), then rounded to
the ISO 4217 minor units of the merchant's currency (JPY and KRW 0 decimals, BHD
and JOD 3, most others 2; ATM withdrawals to a round note). A card paying in a
currency other than its home currency (travel, foreign e-commerce) gets the
cardholder billing fields (ISO 8583 DE6/DE51): ``billing_amount`` in the card's
currency with the issuer's FX markup (0 to ``fx_markup_max``, per card) and
``billing_currency``. So the same true value gives the same reference amount up
to rounding (and the markup when billed), whatever the currency.

Fraud scenarios (``scenario`` column; ``None`` for legitimate rows):

``card_testing``
    a burst of 3-8 tiny e-commerce authorisations from a new device at several
    merchants, then one large one; in half of the episodes the tests are
    zero-value authorisations (amount 0).
``compromised_merchant``
    a point of sale whose transactions turn fraudulent for up to 5-20 days
    (skimming; at most 30 victims per merchant).
``account_takeover``
    a new device, often abroad, amounts 5-25x the card's habit, within two days.
``impossible_travel``
    a cloned card used in person in a distant country 10-120 minutes after a
    genuine card-present transaction, then a few more there.
``high_amount``
    a single purchase 15-60x the card's usual amount.

Labels arrive late. All fraud rows of one episode share one ``label_time``: the
episode's last transaction plus a log-normal delay (median 5 days, clipped to
1 hour .. 60 days); a compromised merchant's victims are reported one by one.
3% of episodes are never reported: their rows keep
``is_fraud=False`` (that is what the bank knows) but keep their ``scenario``, so
evaluation can count them as misses. Legitimate rows get ``label_time`` =
``event_time`` + 30 days (the end of the chargeback window); the event stream
emits no label for them by default (a transaction without a fraud label is
legitimate so far). See :mod:`training.history` for the file format.

>>> h = simulate(SimConfig(n_transactions=2_000, n_cards=100, days=10, seed=1))
>>> len(h) >= 2_000, bool(h["event_time"].is_monotonic_increasing)
(True, True)
>>> sorted(h["scenario"].dropna().unique().tolist())[:2]
['account_takeover', 'card_testing']
>>> sorted(h["currency"].unique().tolist())[:4]
['AED', 'AUD', 'BHD', 'BRL']
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from topics.contracts import AttributeValue, Transaction
from topics.currency import MINOR_UNITS, default_rates

if TYPE_CHECKING:
    from collections.abc import Iterator

    from training.history import History

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MIN_MS = 60_000
#: Monday 2025-01-06 00:00 UTC.
DEFAULT_START_MS = 1_736_121_600_000

SCENARIOS = (
    "card_testing",
    "compromised_merchant",
    "account_takeover",
    "impossible_travel",
    "high_amount",
)
#: Share of the fraud budget per scenario (same order as SCENARIOS).
SCENARIO_SHARE = (0.22, 0.25, 0.23, 0.15, 0.15)

# code, currency, lat, lon, weight as a home country, weight as a merchant country
_COUNTRIES = [
    ("DE", "EUR", 51.2, 10.4, 0.22, 0.20),
    ("FR", "EUR", 46.6, 2.4, 0.20, 0.18),
    ("ES", "EUR", 40.4, -3.7, 0.12, 0.11),
    ("IT", "EUR", 42.8, 12.5, 0.12, 0.11),
    ("NL", "EUR", 52.2, 5.3, 0.08, 0.07),
    ("GB", "GBP", 52.5, -1.5, 0.12, 0.11),
    ("PL", "PLN", 52.1, 19.4, 0.06, 0.05),
    ("SE", "SEK", 59.3, 18.0, 0.04, 0.04),
    ("US", "USD", 39.8, -98.6, 0.04, 0.06),
    ("JP", "JPY", 35.7, 139.7, 0.03, 0.03),
    ("BH", "BHD", 26.1, 50.6, 0.01, 0.01),
    ("BR", "BRL", -15.8, -47.9, 0.0, 0.02),
    ("TH", "THB", 13.7, 100.5, 0.0, 0.02),
    ("ZA", "ZAR", -26.2, 28.0, 0.0, 0.015),
    ("AU", "AUD", -33.9, 151.2, 0.0, 0.015),
    ("KR", "KRW", 37.6, 127.0, 0.0, 0.01),
    ("JO", "JOD", 31.9, 35.9, 0.0, 0.01),
    ("AE", "AED", 25.2, 55.3, 0.0, 0.01),
]
_CC = np.array([c[0] for c in _COUNTRIES])
_CUR = np.array([c[1] for c in _COUNTRIES])
_LAT = np.array([c[2] for c in _COUNTRIES])
_LON = np.array([c[3] for c in _COUNTRIES])
_HOME_W = np.array([c[4] for c in _COUNTRIES])
_MERCH_W = np.array([c[5] for c in _COUNTRIES])
#: Units of each country's currency per EUR, from the committed rate table.
_FX = np.array([default_rates("EUR").per_reference[c] for c in _CUR])
#: ISO 4217 minor units of each country's currency and 10**minor_units.
_MINOR = np.array([MINOR_UNITS[c] for c in _CUR])
_SCALE = 10.0 ** _MINOR
#: ATM note per currency: 10**floor(log10(20 EUR in that currency)), e.g. 10 EUR, 1000 JPY.
_NOTE = 10.0 ** np.floor(np.log10(20.0 * _FX))
#: True values are clipped to this range (EUR): below the validation's reference limit.
_VALUE_RANGE = (0.5, 900_000.0)

# mcc, channel (0 pos, 1 ecom, 2 atm), log-amount shift, weight
_MCCS = [
    ("5411", 0, 0.0, 0.22), ("5812", 0, -0.2, 0.14), ("5541", 0, 0.4, 0.08),
    ("5311", 0, 0.5, 0.06), ("5912", 0, -0.3, 0.05), ("5732", 0, 1.3, 0.03),
    ("7011", 0, 1.4, 0.02), ("4111", 0, -1.0, 0.06), ("5999", 0, 0.2, 0.04),
    ("5818", 1, -0.8, 0.06), ("5942", 1, 0.0, 0.04), ("5964", 1, 0.6, 0.08),
    ("4722", 1, 1.6, 0.02), ("5735", 1, -0.9, 0.03), ("6011", 2, 1.1, 0.07),
]
_MCC = np.array([m[0] for m in _MCCS])
_MCC_CH = np.array([m[1] for m in _MCCS])
_MCC_SHIFT = np.array([m[2] for m in _MCCS])
_MCC_W = np.array([m[3] for m in _MCCS])

CHANNELS = np.array(["pos", "ecom", "atm", "moto"])
ENTRY_MODES = np.array(["chip", "contactless", "swipe", "manual", "ecom"])
# Share of transactions per UTC hour (European-local daytime rhythm).
_DIURNAL = np.array(
    [0.4, 0.25, 0.15, 0.1, 0.1, 0.2, 0.6, 1.5, 2.6, 3.2, 3.6, 4.2,
     5.0, 4.6, 4.2, 4.3, 4.8, 5.4, 5.8, 5.4, 4.4, 3.2, 2.0, 1.0]
)
_WEEKLY = np.array([0.92, 0.95, 0.97, 1.0, 1.15, 1.2, 0.8])  # Mon..Sun


@dataclass(frozen=True)
class SimConfig:
    """What to simulate; the same config and seed give the same history, row for row."""

    n_transactions: int = 1_000_000
    n_cards: int = 20_000
    days: int = 90
    seed: int = 7
    fraud_rate: float = 0.005
    start_ms: int = DEFAULT_START_MS
    n_merchants: int | None = None  # default: n_cards // 8, at least 60
    unreported_share: float = 0.03
    legit_label_delay_days: float = 30.0
    #: Share of legitimate e-commerce purchases preceded by a zero-value account
    #: verification (amount 0) at the same merchant 5-120 s before.
    zero_auth_rate: float = 0.04
    #: Share of card-testing episodes whose tests are zero-value authorisations.
    zero_test_share: float = 0.5
    #: Share of legitimate purchases at home made at a foreign web shop (any country).
    cross_border_ecom_rate: float = 0.03
    #: Issuer FX markup on billing amounts: per card, uniform in [0, fx_markup_max].
    fx_markup_max: float = 0.03


@dataclass
class _World:
    card_country: np.ndarray
    card_lat: np.ndarray
    card_lon: np.ndarray
    card_mu: np.ndarray
    card_sigma: np.ndarray
    card_peak: np.ndarray
    card_fav: np.ndarray
    card_markup: np.ndarray
    m_country: np.ndarray
    m_lat: np.ndarray
    m_lon: np.ndarray
    m_mcc: np.ndarray
    m_by_country: list[np.ndarray]
    m_pos_by_country: list[np.ndarray]
    m_ecom: np.ndarray


def _world(cfg: SimConfig, rng: np.random.Generator) -> _World:
    nc = cfg.n_cards
    nm = cfg.n_merchants or max(60, nc // 8)
    card_country = rng.choice(len(_COUNTRIES), nc, p=_HOME_W / _HOME_W.sum())
    card_lat = _LAT[card_country] + rng.normal(0, 1.5, nc)
    card_lon = _LON[card_country] + rng.normal(0, 2.0, nc)
    m_country = rng.choice(len(_COUNTRIES), nm, p=_MERCH_W / _MERCH_W.sum())
    m_country[: len(_COUNTRIES)] = np.arange(len(_COUNTRIES))  # every country has a merchant
    m_mcc = rng.choice(len(_MCCS), nm, p=_MCC_W / _MCC_W.sum())
    # every country gets at least one point of sale and one ecom merchant
    m_mcc[: len(_COUNTRIES)] = 0
    m_mcc[len(_COUNTRIES): 2 * len(_COUNTRIES)] = 11
    m_country[len(_COUNTRIES): 2 * len(_COUNTRIES)] = np.arange(len(_COUNTRIES))
    m_lat = np.clip(_LAT[m_country] + rng.normal(0, 1.5, nm), -89, 89)
    m_lon = np.clip(_LON[m_country] + rng.normal(0, 2.0, nm), -179, 179)
    by_country = [np.flatnonzero(m_country == c) for c in range(len(_COUNTRIES))]
    pos = _MCC_CH[m_mcc] == 0
    pos_by_country = [np.flatnonzero((m_country == c) & pos) for c in range(len(_COUNTRIES))]
    # favourites: 8 merchants of the home country, mostly not ATMs
    fav = np.empty((nc, 8), dtype=np.int64)
    for c in range(len(_COUNTRIES)):
        cards = np.flatnonzero(card_country == c)
        if cards.size:
            pool = by_country[c]
            fav[cards] = pool[rng.integers(0, pool.size, (cards.size, 8))]
    return _World(
        card_country=card_country,
        card_lat=card_lat,
        card_lon=card_lon,
        card_mu=rng.normal(3.0, 0.55, nc),
        card_sigma=rng.uniform(0.45, 0.9, nc),
        card_peak=rng.normal(14.0, 3.5, nc),
        card_fav=fav,
        card_markup=np.round(rng.uniform(0.0, cfg.fx_markup_max, nc) * 200) / 200,
        m_country=m_country,
        m_lat=m_lat,
        m_lon=m_lon,
        m_mcc=m_mcc,
        m_by_country=by_country,
        m_pos_by_country=pos_by_country,
        m_ecom=np.flatnonzero(_MCC_CH[m_mcc] == 1),
    )


def _pick(rng: np.random.Generator, pools: list[np.ndarray], country: np.ndarray) -> np.ndarray:
    """One random merchant from ``pools[country[i]]`` per row (vectorised per country)."""
    out = np.empty(country.size, dtype=np.int64)
    for c in np.unique(country):
        rows = np.flatnonzero(country == c)
        pool = pools[c]
        out[rows] = pool[rng.integers(0, pool.size, rows.size)]
    return out


def _times(rng: np.random.Generator, cfg: SimConfig, peak: np.ndarray) -> np.ndarray:
    n = peak.size
    dw = np.resize(_WEEKLY, cfg.days)
    day = rng.choice(cfg.days, n, p=dw / dw.sum())
    habit = (peak + rng.normal(0, 2.5, n)) % 24
    rhythm = rng.choice(24, n, p=_DIURNAL / _DIURNAL.sum()) + rng.random(n)
    hour = np.where(rng.random(n) < 0.6, habit, rhythm)
    return cfg.start_ms + day * DAY_MS + (hour * HOUR_MS).astype(np.int64)


def _values(rng: np.random.Generator, w: _World, card: np.ndarray, merchant: np.ndarray,
            mult: np.ndarray | float = 1.0) -> np.ndarray:
    """True values in EUR (unrounded): the card's habit, shifted by the merchant's MCC."""
    mcc = w.m_mcc[merchant]
    base = np.exp(w.card_mu[card] + _MCC_SHIFT[mcc] + rng.normal(0, 1, card.size)
                  * w.card_sigma[card]) * mult
    return np.clip(base, *_VALUE_RANGE)


def _round_minor(values: np.ndarray, country: np.ndarray) -> np.ndarray:
    """Round to the ISO 4217 minor units of each country's currency (k / 10**d, exact)."""
    scale = _SCALE[country]
    return np.round(values * scale) / scale


def _money(w: _World, card: np.ndarray, merchant: np.ndarray, value: np.ndarray,
           channel: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Local amount and currency (country index), billing amount and currency (-1: none).

    The local amount is the true value in the merchant's currency by the rate
    table, rounded to its minor units (ATM: to a note); the billing amount is the
    local amount back in EUR and then in the card's currency, plus the card's
    FX markup, rounded to the card currency's minor units.
    """
    local_c = w.m_country[merchant]
    home_c = w.card_country[card]
    local = value * _FX[local_c]
    atm = channel == 2
    note = _NOTE[local_c[atm]]
    local[atm] = np.where(value[atm] > 0, np.maximum(note, np.round(local[atm] / note) * note),
                          0.0)
    local = _round_minor(local, local_c)
    foreign = _CUR[local_c] != _CUR[home_c]
    billing_c = np.where(foreign, home_c, -1)
    billing = np.full(value.size, np.nan)
    billed = local[foreign] / _FX[local_c[foreign]] * _FX[home_c[foreign]] * (
        1.0 + w.card_markup[card[foreign]])
    billing[foreign] = _round_minor(billed, home_c[foreign])
    return local, local_c, billing, billing_c


def _frame(w: _World, card: np.ndarray, merchant: np.ndarray, t: np.ndarray,
           value: np.ndarray, rng: np.random.Generator, device: np.ndarray | None = None,
           entry: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Columns of simulated rows; ``value`` is the true value in EUR (0: verification)."""
    ch = _MCC_CH[w.m_mcc[merchant]].copy()
    n = card.size
    moto = (ch == 1) & (rng.random(n) < 0.02)
    ch[moto] = 3
    if entry is None:
        entry = np.where(rng.random(n) < 0.6, 1, 0)
        entry[rng.random(n) < 0.04] = 2
        entry[ch == 2] = 0
        entry[ch == 1] = 4
        entry[ch == 3] = 3
    if device is None:
        second = rng.random(n) < 0.15
        device = np.where(second, 1, 0)
        device[(ch == 0) | (ch == 2)] = -1
    return {"card": card, "merchant": merchant, "t": t, "value": value,
            "channel": ch, "entry": np.asarray(entry), "device": device}


def _spend(rng: np.random.Generator, cfg: SimConfig, w: _World, card: np.ndarray,
           t: np.ndarray, abroad: np.ndarray) -> dict[str, np.ndarray]:
    """Legitimate purchases of ``card`` at ``t``, plus zero-value verifications.

    ``abroad`` is the country index of a card travelling at that time, -1 at home.
    A zero-value account verification precedes ``cfg.zero_auth_rate`` of the
    e-commerce purchases by 5-120 s.
    """
    n = card.size
    u = rng.random(n)
    fav_rank = np.minimum(rng.geometric(0.35, n) - 1, 7)
    merchant = w.card_fav[card, fav_rank]
    home = u >= 0.72
    merchant[home] = _pick(rng, w.m_by_country, w.card_country[card[home]])
    away = abroad >= 0
    merchant[away] = _pick(rng, w.m_by_country, abroad[away])
    # cross-border e-commerce: a web shop anywhere, paid in its currency
    web = ~away & (rng.random(n) < cfg.cross_border_ecom_rate)
    merchant[web] = w.m_ecom[rng.integers(0, w.m_ecom.size, int(web.sum()))]
    mult = np.where(rng.random(n) < 0.002, rng.uniform(8, 25, n), 1.0)
    f = _frame(w, card, merchant, t, _values(rng, w, card, merchant, mult), rng)
    verify = np.flatnonzero((f["channel"] == 1) & (rng.random(n) < cfg.zero_auth_rate))
    if verify.size:
        extra = {k: v[verify].copy() for k, v in f.items()}
        extra["t"] -= rng.integers(5, 121, verify.size) * 1000
        extra["value"][:] = 0.0
        f = {k: np.concatenate([f[k], extra[k]]) for k in f}
    return f


def simulate(cfg: SimConfig, progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Simulate a labelled history (format of :mod:`training.history` plus ``scenario``)."""
    say = progress or (lambda _msg: None)
    rng = np.random.default_rng(cfg.seed)
    w = _world(cfg, rng)
    nc = cfg.n_cards
    n_fraud_target = int(round(cfg.n_transactions * cfg.fraud_rate))
    n_legit = cfg.n_transactions - n_fraud_target
    say(f"world: {nc} cards, {w.m_country.size} merchants; {n_legit} legitimate transactions")

    # ---- legitimate spending
    activity = rng.lognormal(0, 0.7, nc)
    card = rng.choice(nc, n_legit, p=activity / activity.sum())
    t = _times(rng, cfg, w.card_peak[card])
    # trips: 12% of cards spend 3-10 days abroad, paying locally 85% of the time there
    trip_card = rng.random(nc) < 0.12
    trip_start = cfg.start_ms + rng.integers(0, max(cfg.days - 3, 1), nc) * DAY_MS
    trip_end = trip_start + rng.integers(3, 11, nc) * DAY_MS
    trip_country = rng.choice(len(_COUNTRIES), nc, p=_MERCH_W / _MERCH_W.sum())
    on_trip = (trip_card[card] & (t >= trip_start[card]) & (t < trip_end[card])
               & (rng.random(n_legit) < 0.85))
    legit = _spend(rng, cfg, w, card, t, np.where(on_trip, trip_country[card], -1))
    n_rows = legit["t"].size
    legit["scenario"] = np.zeros(n_rows, dtype=np.int8)
    legit["episode"] = np.full(n_rows, -1, dtype=np.int64)
    say("legitimate spending done; injecting fraud")

    frames = [legit]
    episode = 0
    budget = [int(n_fraud_target * s) for s in SCENARIO_SHARE]
    end_ms = cfg.start_ms + cfg.days * DAY_MS

    # ---- card testing: tiny ecom burst from a new device, then a large amount
    sizes: list[int] = []
    while sum(sizes) < budget[0]:
        sizes.append(int(rng.integers(3, 9)) + 1)
    if sizes:
        k = len(sizes)
        victims = rng.integers(0, nc, k)
        t0 = cfg.start_ms + rng.integers(0, cfg.days * DAY_MS - DAY_MS, k)
        n = sum(sizes)
        ep = np.repeat(np.arange(episode, episode + k), sizes)
        pos_in = np.concatenate([np.arange(s) for s in sizes])
        last = np.concatenate([np.arange(s) == s - 1 for s in sizes])
        c = np.repeat(victims, sizes)
        gaps = np.where(last, rng.integers(2, 30, n) * MIN_MS, rng.integers(10, 120, n) * 1000)
        tt = np.repeat(t0, sizes) + np.cumsum(gaps) - np.repeat(
            np.cumsum(gaps)[np.cumsum(sizes) - np.array(sizes)], sizes) + pos_in
        m = w.m_ecom[rng.integers(0, w.m_ecom.size, n)]
        zero = np.repeat(rng.random(k) < cfg.zero_test_share, sizes) & ~last
        value = np.where(last, rng.uniform(300, 2500, n),
                         np.where(zero, 0.0, rng.uniform(0.5, 3.0, n)))
        f = _frame(w, c, m, tt, value, rng, device=np.full(n, -2))
        f["scenario"] = np.full(n, 1, dtype=np.int8)
        f["episode"] = ep
        frames.append(f)
        episode += k

    # ---- compromised merchant: relabel its card-present transactions in a window
    remaining = budget[1]
    ch = legit["channel"]
    pos_rows = np.flatnonzero(ch == 0)
    order = rng.permutation(np.unique(legit["merchant"][pos_rows]))
    for mid in order:
        if remaining <= 0:
            break
        start = cfg.start_ms + int(rng.integers(0, max(cfg.days - 5, 1))) * DAY_MS
        stop = start + int(rng.integers(5, 21)) * DAY_MS
        rows = np.flatnonzero((legit["merchant"] == mid) & (legit["t"] >= start)
                              & (legit["t"] < stop) & (ch == 0))
        rows = rows[rng.random(rows.size) < 0.7]
        # at most 30 victims per merchant (the skimmer is found): many small episodes over time
        rows = rows[np.argsort(legit["t"][rows], kind="stable")][: min(remaining, 30)]
        if rows.size == 0:
            continue
        # each victim transaction is reported on its own (chargebacks come per card)
        legit["scenario"][rows] = 2
        legit["episode"][rows] = np.arange(episode, episode + rows.size)
        episode += rows.size
        remaining -= rows.size

    # ---- account takeover: new device, often abroad, amounts far above habit
    sizes = []
    while sum(sizes) < budget[2]:
        sizes.append(int(rng.integers(2, 7)))
    if sizes:
        k, n = len(sizes), sum(sizes)
        victims = rng.integers(0, nc, k)
        t0 = cfg.start_ms + rng.integers(0, cfg.days * DAY_MS - 2 * DAY_MS, k)
        c = np.repeat(victims, sizes)
        tt = np.repeat(t0, sizes) + rng.integers(0, 48 * HOUR_MS, n)
        abroad = np.repeat(rng.random(k) < 0.5, sizes)
        country = np.where(abroad, rng.choice(len(_COUNTRIES), n, p=_MERCH_W / _MERCH_W.sum()),
                           w.card_country[c])
        ecom_pools = [np.intersect1d(p, w.m_ecom) for p in w.m_by_country]
        m = _pick(rng, ecom_pools, country)
        f = _frame(w, c, m, tt, _values(rng, w, c, m, rng.uniform(5, 25, n)), rng,
                   device=np.full(n, -2))
        f["scenario"] = np.full(n, 3, dtype=np.int8)
        f["episode"] = np.repeat(np.arange(episode, episode + k), sizes)
        frames.append(f)
        episode += k

    # ---- impossible travel: card-present far away shortly after a genuine one
    sizes = []
    while sum(sizes) < budget[3]:
        sizes.append(int(rng.integers(1, 5)))
    if sizes and pos_rows.size:
        k, n = len(sizes), sum(sizes)
        anchors = pos_rows[rng.integers(0, pos_rows.size, k)]
        c = np.repeat(legit["card"][anchors], sizes)
        home_c = w.card_country[legit["card"][anchors]]
        far = np.array([_far_country(int(h), rng) for h in home_c])
        country = np.repeat(far, sizes)
        m = _pick(rng, w.m_pos_by_country, country)
        first = np.repeat(legit["t"][anchors] + rng.integers(10, 121, k) * MIN_MS, sizes)
        offs = np.concatenate([np.sort(rng.integers(0, 6 * HOUR_MS, s)) for s in sizes])
        offs[np.cumsum(sizes) - np.array(sizes)] = 0
        f = _frame(w, c, m, first + offs, _values(rng, w, c, m, rng.uniform(2, 8, n)), rng,
                   entry=np.full(n, 2))
        f["scenario"] = np.full(n, 4, dtype=np.int8)
        f["episode"] = np.repeat(np.arange(episode, episode + k), sizes)
        frames.append(f)
        episode += k

    # ---- high amount: single outlier purchase
    n = budget[4]
    if n:
        c = rng.integers(0, nc, n)
        tt = _times(rng, cfg, w.card_peak[c])
        m = _pick(rng, w.m_by_country, w.card_country[c])
        f = _frame(w, c, m, tt, _values(rng, w, c, m, rng.uniform(15, 60, n)), rng)
        f["scenario"] = np.full(n, 5, dtype=np.int8)
        f["episode"] = np.arange(episode, episode + n)
        frames.append(f)
        episode += n

    say(f"{episode} fraud episodes; building rows")
    cols = {k: np.concatenate([f[k] for f in frames]) for k in frames[0]}
    keep = (cols["t"] < end_ms) & (cols["t"] >= cfg.start_ms)
    cols = {k: v[keep] for k, v in cols.items()}
    order = np.lexsort((cols["card"], cols["t"]))
    cols = {k: v[order] for k, v in cols.items()}
    return _to_frame(cfg, w, cols, episode, rng)


def simulated_history(cfg: SimConfig) -> History:
    """The simulated history as a :class:`training.history.History`.

    Feed ``devkit.produce`` with ``h.transactions`` (ordered by event time) and the
    ``labels`` topic with ``training.history.labels(h)``; ``training.history.events(h)``
    merges both in stream order.
    """
    from training.history import from_frame

    return from_frame(simulate(cfg))


#: Optional fields the stream drops now and then on purpose (lat/lon go together).
_DROPPABLE = ("mcc", "channel", "entry_mode", "country", "latlon", "device_id", "ip",
              "customer_id")


def transaction_stream(
    count: int | None = None,
    *,
    seed: int = 0,
    cards: int = 1000,
    merchants: int | None = None,
    start_ms: int | None = None,
    mean_gap_ms: float = 100.0,
    missing_rate: float = 0.1,
    cross_border_rate: float = 0.05,
    chunk: int = 10_000,
) -> Iterator[Transaction]:
    """Yield ``count`` legitimate transactions (forever if None) from the simulator's world.

    The same cards, merchants, currencies, billing fields and zero-value
    verifications as :func:`simulate`, in stream order: event times start after
    ``start_ms`` (default: now) and grow by ``1 + Exp(mean_gap_ms)`` ms, strictly.
    ``cross_border_rate`` of the purchases are made abroad (local currency, billed
    in the card's); with probability ``missing_rate`` a transaction lacks one
    optional field. Transaction ids are ``tx-<seed>-<n>``; the same arguments
    give the same transactions. Raises ``ValueError`` when ``cards`` < 1.
    """
    if cards < 1:
        raise ValueError("cards must be at least 1")
    cfg = SimConfig(n_cards=cards, n_merchants=max(60, merchants or cards // 5), seed=seed)
    rng = np.random.default_rng(seed)
    w = _world(cfg, rng)
    activity = rng.lognormal(0, 0.7, cards)
    p_card = activity / activity.sum()
    p_abroad = _MERCH_W / _MERCH_W.sum()
    now = start_ms if start_ms is not None else int(time.time()) * 1000
    i = 0
    while count is None or i < count:
        k = chunk if count is None else min(chunk, count - i)
        card = rng.choice(cards, k, p=p_card)
        abroad = np.where(rng.random(k) < cross_border_rate,
                          rng.choice(len(_COUNTRIES), k, p=p_abroad), -1)
        # draft times 1000 s apart: a verification lands just before its purchase
        f = _spend(rng, cfg, w, card, np.arange(k, dtype=np.int64) * 1_000_000, abroad)
        order = np.argsort(f["t"], kind="stable")[:k]
        f = {key: v[order] for key, v in f.items()}
        t = now + np.cumsum(1 + rng.exponential(mean_gap_ms, k).astype(np.int64))
        now = int(t[-1])
        amount, local_c, billing, billing_c = _money(w, f["card"], f["merchant"], f["value"],
                                                     f["channel"])
        drop = np.where(rng.random(k) < missing_rate, rng.integers(0, len(_DROPPABLE), k), -1)
        three_ds = rng.random(k) < 0.8
        for r in range(k):
            yield _stream_row(w, f, r, f"tx-{seed}-{i + r:09d}", int(t[r]), float(amount[r]),
                              int(local_c[r]), float(billing[r]), int(billing_c[r]),
                              int(drop[r]), bool(three_ds[r]))
        i += k


def _stream_row(w: _World, f: dict[str, np.ndarray], r: int, tid: str, t: int, amount: float,
                local_c: int, billing: float, billing_c: int, drop: int,
                three_ds: bool) -> Transaction:
    card, merchant, channel = int(f["card"][r]), int(f["merchant"][r]), int(f["channel"][r])
    fields: dict[str, Any] = {
        "transaction_id": tid,
        "card_id": f"c{card:06d}",
        "merchant_id": f"m{merchant:06d}",
        "amount": amount,
        "currency": str(_CUR[local_c]),
        "event_time": t,
        "mcc": str(_MCC[w.m_mcc[merchant]]),
        "channel": str(CHANNELS[channel]),
        "entry_mode": str(ENTRY_MODES[f["entry"][r]]),
        "country": str(_CC[local_c]),
        "customer_id": f"cust-{card // 2 if card % 7 == 0 else card:06d}",
    }
    if billing_c >= 0:
        fields["billing_amount"] = billing
        fields["billing_currency"] = str(_CUR[billing_c])
    if channel in (0, 2):
        fields["lat"] = round(float(w.m_lat[merchant]), 4)
        fields["lon"] = round(float(w.m_lon[merchant]), 4)
    else:
        fields["device_id"] = f"dc{card:06d}{max(int(f['device'][r]), 0)}"
        fields["ip"] = f"10.{card // 65536 % 256}.{card // 256 % 256}.{card % 256}"
        if channel == 1:
            attributes: dict[str, AttributeValue] = {"three_ds": three_ds}
            fields["attributes"] = attributes
    if drop >= 0:
        name = _DROPPABLE[drop]
        for key in ("lat", "lon") if name == "latlon" else (name,):
            fields.pop(key, None)
    return Transaction(**fields)


def _far_country(home: int, rng: np.random.Generator) -> int:
    """A country at least ~1500 km from ``home`` (by centroid)."""
    d = np.hypot(_LAT - _LAT[home], (_LON - _LON[home]) * np.cos(np.radians(_LAT[home])))
    far = np.flatnonzero(d > 13.0)
    return int(rng.choice(far))


def _to_frame(cfg: SimConfig, w: _World, cols: dict[str, np.ndarray], n_episodes: int,
              rng: np.random.Generator) -> pd.DataFrame:
    n = cols["t"].size
    card, merchant, t = cols["card"], cols["merchant"], cols["t"]
    fraud = cols["scenario"] > 0
    # one label time per episode: last transaction + log-normal delay
    ep = cols["episode"]
    ep_last = np.zeros(n_episodes, dtype=np.int64)
    np.maximum.at(ep_last, ep[fraud], t[fraud])
    delay = np.clip(np.exp(rng.normal(np.log(5.0), 0.8, n_episodes)), 1 / 24, 60.0) * DAY_MS
    reported = rng.random(n_episodes) >= cfg.unreported_share
    label_time = t + int(cfg.legit_label_delay_days * DAY_MS)
    label_time[fraud] = ep_last[ep[fraud]] + delay[ep[fraud]].astype(np.int64)
    is_fraud = fraud & reported[np.where(fraud, ep, 0)]

    mcountry = w.m_country[merchant]
    amount, _, billing, billing_c = _money(w, card, merchant, cols["value"], cols["channel"])
    billing_cur = pd.array(np.where(billing_c >= 0, _CUR[np.maximum(billing_c, 0)], ""),
                           dtype="string")
    billing_cur[billing_c < 0] = pd.NA
    present = (cols["channel"] == 0) | (cols["channel"] == 2)
    dev = cols["device"]
    card_ids = np.char.add("c", np.char.zfill(card.astype(str), 6))
    device = np.where(dev >= 0, np.char.add(np.char.add("d", card_ids), dev.astype(str)), "")
    # fraudster devices: one per episode
    device = np.where(dev == -2, np.char.add("x", np.char.zfill(ep.astype(str), 7)), device)
    device_col = pd.array(device, dtype="string")
    device_col[dev == -1] = pd.NA
    scen_names = np.array([None, *SCENARIOS], dtype=object)
    lat = np.where(present, np.round(w.m_lat[merchant], 4), np.nan)
    lon = np.where(present, np.round(w.m_lon[merchant], 4), np.nan)
    return pd.DataFrame({
        "transaction_id": np.char.add("t", np.char.zfill(np.arange(n).astype(str), 9)),
        "card_id": card_ids,
        "merchant_id": np.char.add("m", np.char.zfill(merchant.astype(str), 6)),
        "amount": amount,
        "currency": _CUR[mcountry],
        "billing_amount": billing,
        "billing_currency": billing_cur,
        "event_time": t.astype(np.int64),
        "mcc": _MCC[w.m_mcc[merchant]],
        "channel": CHANNELS[cols["channel"]],
        "entry_mode": ENTRY_MODES[cols["entry"]],
        "country": _CC[mcountry],
        "lat": lat,
        "lon": lon,
        "device_id": device_col,
        "is_fraud": is_fraud,
        "label_time": label_time.astype(np.int64),
        "scenario": pd.array(scen_names[cols["scenario"]], dtype="string"),
    })


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: simulate a labelled history and write it as Parquet."""
    p = argparse.ArgumentParser(prog="python -m training.simulate",
                                description="Simulate a labelled card-transaction history.")
    p.add_argument("-n", "--transactions", type=int, default=300_000,
                   help="number of transactions (default 300000)")
    p.add_argument("--cards", type=int, default=None, help="number of cards (default n/50)")
    p.add_argument("--days", type=int, default=90, help="days of history (default 90)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument("--fraud-rate", type=float, default=0.005,
                   help="share of fraudulent transactions (default 0.005)")
    p.add_argument("--out", type=Path, default=Path("data/history.parquet"),
                   help="output Parquet file (default data/history.parquet)")
    args = p.parse_args(argv)
    if args.transactions < 1000 or not 0 < args.fraud_rate < 0.5 or args.days < 7:
        p.error("need --transactions >= 1000, 0 < --fraud-rate < 0.5 and --days >= 7")
    cfg = SimConfig(n_transactions=args.transactions,
                    n_cards=args.cards or max(100, args.transactions // 50),
                    days=args.days, seed=args.seed, fraud_rate=args.fraud_rate)
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[simulate {time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    history = simulate(cfg, say)
    from training.history import write_history

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_history(history, args.out)
    counts = history["scenario"].value_counts().to_dict()
    say(f"wrote {len(history)} rows to {args.out}: {int(history['is_fraud'].sum())} labelled "
        f"fraud; per scenario {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
