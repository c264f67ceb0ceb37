"""A small, seeded generator of plausible card transactions for demos and broker tests.

Not the fraud simulator (that lives in ``training/``, with fraud patterns and
labels): this only makes valid ``Transaction`` records with realistic-looking
fields, a pool of cards each with a home country, merchants with a category
and location, optional fields sometimes missing on purpose, unique transaction
ids and strictly increasing event times.

>>> txns = list(synthetic_transactions(3, seed=7, cards=10, start_ms=1_700_000_000_000))
>>> [t.transaction_id for t in txns]
['tx-7-000000000', 'tx-7-000000001', 'tx-7-000000002']
>>> txns[0].event_time > 1_700_000_000_000 and txns[0].event_time < txns[1].event_time
True
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from topics.contracts import AttributeValue, Transaction

# country: (currency, latitude, longitude, weight, units per "dollar" of amount)
_COUNTRIES: dict[str, tuple[str, float, float, float, float]] = {
    "US": ("USD", 39.8, -98.6, 30, 1.0),
    "GB": ("GBP", 52.5, -1.5, 10, 0.8),
    "FR": ("EUR", 46.6, 2.2, 9, 0.9),
    "DE": ("EUR", 51.0, 10.0, 9, 0.9),
    "ES": ("EUR", 40.2, -3.7, 6, 0.9),
    "IT": ("EUR", 42.8, 12.5, 6, 0.9),
    "NL": ("EUR", 52.1, 5.3, 4, 0.9),
    "CA": ("CAD", 45.5, -75.0, 6, 1.35),
    "AU": ("AUD", -33.9, 151.0, 5, 1.5),
    "JP": ("JPY", 35.7, 139.7, 6, 150.0),
    "BR": ("BRL", -23.5, -46.6, 4, 5.0),
    "IN": ("INR", 19.1, 72.9, 3, 83.0),
    "MX": ("MXN", 19.4, -99.1, 2, 17.0),
}
# mcc: (description, median amount in USD, channels it trades on)
_MCCS: dict[str, tuple[str, float, tuple[str, ...]]] = {
    "5411": ("grocery", 45.0, ("pos", "pos", "ecom")),
    "5812": ("restaurant", 35.0, ("pos",)),
    "5541": ("fuel", 50.0, ("pos",)),
    "5999": ("retail", 30.0, ("pos", "ecom")),
    "5732": ("electronics", 250.0, ("pos", "ecom", "ecom")),
    "4111": ("transport", 12.0, ("pos", "ecom")),
    "5311": ("department store", 80.0, ("pos", "ecom")),
    "7011": ("hotel", 220.0, ("ecom", "moto", "pos")),
    "5967": ("direct marketing", 40.0, ("ecom", "moto")),
    "4829": ("money transfer", 300.0, ("ecom",)),
    "6011": ("cash withdrawal", 120.0, ("atm",)),
}
_POS_ENTRY = ("chip", "contactless", "contactless", "contactless", "swipe")
_ENTRY_FOR_CHANNEL = {"ecom": "ecom", "atm": "chip", "moto": "manual"}
# Optional fields that may be dropped on purpose (lat/lon go together).
_DROPPABLE = ("mcc", "channel", "entry_mode", "country", "latlon", "device_id", "ip", "customer_id")


@dataclass(frozen=True, slots=True)
class _Card:
    card_id: str
    customer_id: str
    country: str
    device_id: str
    ip: str


@dataclass(frozen=True, slots=True)
class _Merchant:
    merchant_id: str
    mcc: str
    country: str
    lat: float
    lon: float
    channels: tuple[str, ...]


def _weighted_country(rng: random.Random) -> str:
    names = list(_COUNTRIES)
    return rng.choices(names, weights=[_COUNTRIES[c][3] for c in names])[0]


def _make_cards(rng: random.Random, n: int) -> list[_Card]:
    return [
        _Card(
            card_id=f"card-{i:07d}",
            customer_id=f"cust-{i // 2 if i % 7 == 0 else i:07d}",  # a few shared customers
            country=_weighted_country(rng),
            device_id=f"dev-{rng.getrandbits(48):012x}",
            ip=f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}."
            f"{rng.randint(1, 254)}",
        )
        for i in range(n)
    ]


def _make_merchants(rng: random.Random, n: int) -> list[_Merchant]:
    merchants = []
    mccs = list(_MCCS)
    for i in range(n):
        country = _weighted_country(rng)
        _, lat, lon, _, _ = _COUNTRIES[country]
        mcc = rng.choice(mccs)
        merchants.append(
            _Merchant(
                merchant_id=f"merch-{i:06d}",
                mcc=mcc,
                country=country,
                lat=round(max(-90.0, min(90.0, lat + rng.gauss(0, 2.0))), 4),
                lon=round(max(-180.0, min(180.0, lon + rng.gauss(0, 3.0))), 4),
                channels=_MCCS[mcc][2],
            )
        )
    return merchants


def synthetic_transactions(
    count: int | None = None,
    *,
    seed: int = 0,
    cards: int = 1000,
    merchants: int | None = None,
    start_ms: int | None = None,
    mean_gap_ms: float = 100.0,
    missing_rate: float = 0.1,
    cross_border_rate: float = 0.05,
) -> Iterator[Transaction]:
    """Yield ``count`` transactions (forever if None), reproducible for a given ``seed``.

    ``card_id`` comes from a pool of ``cards`` cards; ``merchants`` defaults to
    ``max(50, cards // 5)``. Event times start after ``start_ms`` (default: now)
    and grow by ``1 + Exp(mean_gap_ms)`` ms. With probability ``missing_rate`` a
    transaction lacks one optional field. Transaction ids are ``tx-<seed>-<n>``.
    """
    if cards < 1:
        raise ValueError("cards must be at least 1")
    rng = random.Random(seed)
    card_pool = _make_cards(rng, cards)
    merchant_pool = _make_merchants(rng, merchants or max(50, cards // 5))
    by_country: dict[str, list[_Merchant]] = {}
    for m in merchant_pool:
        by_country.setdefault(m.country, []).append(m)
    now = start_ms if start_ms is not None else int(time.time()) * 1000
    i = 0
    while count is None or i < count:
        now += 1 + int(rng.expovariate(1.0 / mean_gap_ms))
        card = rng.choice(card_pool)
        local = by_country.get(card.country)
        merchant = (
            rng.choice(local)
            if local and rng.random() >= cross_border_rate
            else rng.choice(merchant_pool)
        )
        currency, _, _, _, units = _COUNTRIES[merchant.country]
        channel = rng.choice(merchant.channels)
        median = _MCCS[merchant.mcc][1] * units
        amount = rng.lognormvariate(0.0, 0.9) * median
        amount = round(amount) if currency == "JPY" else round(amount, 2)
        fields: dict[str, Any] = {
            "transaction_id": f"tx-{seed}-{i:09d}",
            "card_id": card.card_id,
            "merchant_id": merchant.merchant_id,
            "amount": float(max(amount, 1.0 if currency == "JPY" else 0.5)),
            "currency": currency,
            "event_time": now,
            "mcc": merchant.mcc,
            "channel": channel,
            "entry_mode": _ENTRY_FOR_CHANNEL.get(channel) or rng.choice(_POS_ENTRY),
            "country": merchant.country,
            "customer_id": card.customer_id,
        }
        if channel in ("pos", "atm"):
            fields["lat"], fields["lon"] = merchant.lat, merchant.lon
        elif channel == "ecom":
            fields["device_id"] = card.device_id
            fields["ip"] = card.ip
            attributes: dict[str, AttributeValue] = {"three_ds": rng.random() < 0.8}
            fields["attributes"] = attributes
        if rng.random() < missing_rate:
            drop = rng.choice(_DROPPABLE)
            if drop == "latlon":
                fields.pop("lat", None)
                fields.pop("lon", None)
            else:
                fields.pop(drop, None)
        yield Transaction(**fields)
        i += 1
