"""Feature spec v2: the ordered, versioned float32 input contract of training and the model.

Every row the feature path returns (:mod:`state.features`) follows :data:`FEATURES`
in order. Changing a name, order, meaning, neutral value or a window's bucket
granularity (see :mod:`state.card`, :mod:`state.merchant`) bumps
:data:`FEATURE_SPEC_VERSION`. Missing optional inputs give the feature's
``neutral`` value, never NaN.

v2 against v1: every amount is in the model's **reference currency** (default
EUR; the cardholder billing amount when the message carries one, see
:func:`topics.currency.reference_amount`), amount 0 (a zero-value authorisation)
is a transaction like any other, merchant state covers all traffic (not one
input partition's share) in closed, anchored windows, labels never move a
window's clock, and seven features are new: ``card_zero_count_24h``, the
delay-aligned merchant risk over 1, 7 and 30 days, the merchant's fraud labels
known over 7 days and its "familiar" fraud over 7 and 30 days (see the table).

>>> N_FEATURES == len(FEATURE_NAMES) and FEATURE_NAMES[0]
'card_count_10m'
>>> describe("card_amount_ratio_30d", 14.0)
"amount 14x the card's 30-day average"
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

FEATURE_SPEC_VERSION = "v2"
#: Days after which most fraud of a day's transactions is known (chargeback delay); the
#: delay-aligned merchant risk looks at windows that ended this long ago.
LABEL_DELAY_DAYS = 7


@dataclass(frozen=True, slots=True)
class Feature:
    """One named model input: what it measures and the value used when it cannot be known."""

    name: str
    description: str
    neutral: float = 0.0


FEATURES: tuple[Feature, ...] = (
    # --- per card, event time (windows end at the latest event time seen on the card) ---
    Feature("card_count_10m", "card transactions in the last 10 min (1-min buckets)"),
    Feature("card_count_1h", "card transactions in the last 1 h (1-min buckets)"),
    Feature("card_count_24h", "card transactions in the last 24 h (15-min buckets)"),
    Feature("card_count_7d", "card transactions in the last 7 d (6-h buckets)"),
    Feature("card_count_30d", "card transactions in the last 30 d (1-day UTC buckets)"),
    Feature("card_amount_sum_1h", "sum of card amounts in the last 1 h"),
    Feature("card_amount_sum_24h", "sum of card amounts in the last 24 h"),
    Feature("card_amount_mean_24h", "mean card amount over 24 h; 0 without history"),
    Feature("card_amount_mean_7d", "mean card amount over 7 d; 0 without history"),
    Feature("card_amount_mean_30d", "mean card amount over 30 d; 0 without history"),
    Feature("card_amount_std_30d", "population std dev of card amounts over 30 d; 0 if < 2"),
    Feature(
        "card_amount_ratio_30d",
        "this amount / 30-d mean amount; 1 without history; 1 + amount when the history "
        "holds only zero-value authorisations",
        1.0,
    ),
    Feature("card_amount_zscore_30d", "(amount - 30-d mean) / 30-d std; 0 if std is 0"),
    Feature(
        "card_seconds_since_prev",
        "seconds since the card's latest earlier event time (0 if this one is late); "
        "30 d without history",
        2_592_000.0,
    ),
    Feature("card_distinct_merchants_1h", "distinct merchants of the card in the last 1 h"),
    Feature("card_distinct_merchants_24h", "distinct merchants of the card in the last 24 h"),
    Feature("card_distinct_countries_24h", "distinct merchant countries of the card in 24 h"),
    Feature("card_new_merchant_30d", "1 if the card has not used this merchant in 30 d", 1.0),
    Feature(
        "card_small_count_10m",
        "card transactions with a reference amount < 5 (zero included) in the last 10 min",
    ),
    Feature(
        "card_travel_speed_kmh",
        "haversine km/h from the card's latest located transaction (time floored to 1 min); "
        "0 without both locations",
    ),
    Feature("card_country_changed", "1 if country differs from the card's latest country"),
    Feature(
        "card_cross_border",
        "1 if country differs from the card's most frequent country so far (its proxy home)",
    ),
    Feature(
        "card_zero_count_24h",
        "zero-value authorisations (account verifications) of the card in the last 24 h",
    ),
    # --- per merchant, over all traffic (see state.merchant) ---
    Feature("merchant_count_1d", "merchant transactions in the last 1 d (1-h buckets)"),
    Feature("merchant_count_7d", "merchant transactions in the last 7 d (6-h buckets)"),
    Feature("merchant_count_30d", "merchant transactions in the last 30 d (1-day buckets)"),
    Feature("merchant_fraud_rate_1d", "fraud labels known before this hour in 1 d / count_1d"),
    Feature("merchant_fraud_rate_7d", "fraud labels known before this hour in 7 d / count_7d"),
    Feature("merchant_fraud_rate_30d", "fraud labels known before this hour in 30 d / count"),
    Feature(
        "merchant_risk_aligned_1d",
        "share of the merchant's transactions of the UTC day 7 days ago whose fraud label is "
        "known before this hour",
    ),
    Feature(
        "merchant_risk_aligned_7d",
        "the same share over the 7 UTC days that ended 7 days ago",
    ),
    Feature(
        "merchant_risk_aligned_30d",
        "the same share over the 30 UTC days that ended 7 days ago",
    ),
    Feature("merchant_fraud_labels_7d", "fraud labels of the merchant known in 7 d (count)"),
    Feature(
        "merchant_familiar_fraud_7d",
        "fraud labels known in 7 d on transactions of the merchant's regular customers "
        "(cards that had used it in the 30 days before)",
    ),
    Feature(
        "merchant_familiar_fraud_30d",
        "the same over 30 d",
    ),
    # --- context of this transaction ---
    Feature("amount", "transaction amount in the reference currency (major units)"),
    Feature("log_amount", "natural log of (1 + amount)"),
    Feature("hour_of_day", "UTC hour of the event time, 0-23"),
    Feature("day_of_week", "UTC day of week, Monday = 0"),
    Feature("is_weekend", "1 on UTC Saturday and Sunday"),
    Feature("is_night", "1 between 00:00 and 05:59 UTC"),
    Feature("channel", "0 missing, 1 pos, 2 ecom, 3 atm, 4 moto"),
    Feature("entry_mode", "0 missing, 1 chip, 2 contactless, 3 swipe, 4 manual, 5 ecom"),
)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
N_FEATURES = len(FEATURES)
INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURE_NAMES)}

def _count(what: str) -> Callable[[float], str]:
    return lambda v: f"{v:.0f} {what}"


def _flag(yes: str, no: str) -> Callable[[float], str]:
    return lambda v: yes if v >= 0.5 else no


#: Stands for the reference currency in the words below (:func:`describe` fills it in).
REF = "¤"
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_CHANNELS = ("no channel given", "card present (POS)", "online (e-commerce)", "ATM",
             "mail/telephone order")
_ENTRY = ("no entry mode given", "chip", "contactless", "magnetic stripe", "manually keyed",
          "e-commerce entry")

#: Analyst wording per feature, given its value (reason codes).
_WORDS: dict[str, Callable[[float], str]] = {
    "card_count_10m": _count("card transactions in the previous 10 minutes"),
    "card_count_1h": _count("card transactions in the previous hour"),
    "card_count_24h": _count("card transactions in the previous 24 hours"),
    "card_count_7d": _count("card transactions in the previous 7 days"),
    "card_count_30d": lambda v: (
        "no card history in the previous 30 days" if v == 0
        else f"{v:.0f} card transactions in the previous 30 days"
    ),
    "card_amount_sum_1h": lambda v: f"{v:,.2f} {REF} spent on the card in the previous hour",
    "card_amount_sum_24h": lambda v: f"{v:,.2f} {REF} spent on the card in the previous 24 hours",
    "card_amount_mean_24h": lambda v: f"card's 24-hour average amount {v:,.2f} {REF}",
    "card_amount_mean_7d": lambda v: f"card's 7-day average amount {v:,.2f} {REF}",
    "card_amount_mean_30d": lambda v: f"card's 30-day average amount {v:,.2f} {REF}",
    "card_amount_std_30d": lambda v: f"card's 30-day amount spread {v:,.2f} {REF}",
    "card_amount_ratio_30d": lambda v: f"amount {v:.3g}x the card's 30-day average",
    "card_amount_zscore_30d": lambda v: (
        f"amount {v:.2g} standard deviations from the card's 30-day mean"
    ),
    "card_seconds_since_prev": lambda v: (
        f"{v:.0f} seconds after the card's previous transaction" if v < 3600
        else f"{v / 3600:.1f} hours after the card's previous transaction"
    ),
    "card_distinct_merchants_1h": _count("merchants in the last hour"),
    "card_distinct_merchants_24h": _count("merchants in the last 24 hours"),
    "card_distinct_countries_24h": _count("countries in the last 24 hours"),
    "card_new_merchant_30d": _flag(
        "merchant new for this card in 30 days", "merchant used by this card before"
    ),
    "card_small_count_10m": _count("small-amount transactions in 10 minutes (card testing?)"),
    "card_zero_count_24h": _count("zero-value authorisations in 24 hours (card testing?)"),
    "card_travel_speed_kmh": lambda v: (
        f"travel at {v:,.0f} km/h since the previous located transaction"
    ),
    "card_country_changed": _flag(
        "country changed since the card's previous transaction", "same country as before"
    ),
    "card_cross_border": _flag(
        "country differs from the card's usual country", "card's usual country"
    ),
    "merchant_count_1d": _count("merchant transactions in the last day"),
    "merchant_count_7d": _count("merchant transactions in the last 7 days"),
    "merchant_count_30d": _count("merchant transactions in the last 30 days"),
    "merchant_fraud_rate_1d": lambda v: f"merchant fraud rate {v:.1%} over 1 day",
    "merchant_fraud_rate_7d": lambda v: f"merchant fraud rate {v:.1%} over 7 days",
    "merchant_fraud_rate_30d": lambda v: f"merchant fraud rate {v:.1%} over 30 days",
    "merchant_risk_aligned_1d": lambda v: (
        f"{v:.1%} of the merchant's transactions a week ago turned out fraudulent"
    ),
    "merchant_risk_aligned_7d": lambda v: (
        f"{v:.1%} of the merchant's transactions in the week before last were fraudulent"
    ),
    "merchant_risk_aligned_30d": lambda v: (
        f"{v:.1%} of the merchant's transactions in the month before last week were fraudulent"
    ),
    "merchant_fraud_labels_7d": _count("fraud reports at this merchant in the last 7 days"),
    "merchant_familiar_fraud_7d": _count(
        "regular customers of this merchant defrauded there in 7 days (compromised point of "
        "sale?)"
    ),
    "merchant_familiar_fraud_30d": _count(
        "regular customers of this merchant defrauded there in 30 days"
    ),
    "amount": lambda v: f"amount {v:,.2f} {REF}",
    "log_amount": lambda v: f"amount {math.expm1(v):,.2f} {REF}",
    "hour_of_day": lambda v: f"at {v:02.0f}:00-{v:02.0f}:59 UTC",
    "day_of_week": lambda v: f"on a {_DAYS[int(v) % 7]}",
    "is_weekend": _flag("at the weekend", "on a weekday"),
    "is_night": _flag("at night (00:00-05:59 UTC)", "in the daytime"),
    "channel": lambda v: _CHANNELS[int(v)] if 0 <= v < len(_CHANNELS) else f"channel {v:g}",
    "entry_mode": lambda v: _ENTRY[int(v)] if 0 <= v < len(_ENTRY) else f"entry mode {v:g}",
}


def describe(name: str, value: float, currency: str = "EUR") -> str:
    """Analyst words for one feature value, for reason codes (generic for unlisted names).

    ``currency`` is the model's reference currency: amounts are named in it, so a
    purchase in another currency is never described as an amount spike.

    >>> describe("card_amount_sum_1h", 120.0, "EUR")
    '120.00 EUR spent on the card in the previous hour'
    """
    words = _WORDS.get(name)
    text = f"{name} = {value:.4g}" if words is None else words(value)
    return text.replace(REF, currency)
