"""What the features read from transactions: columns for the kernels, one tuple for the reference.

The feature code reads these, not the wire contract: the amount is already in the
reference currency and the event time is the one the stream uses (clamped when it
ran ahead of its record's Kafka timestamp). :class:`FeatureInputs` is a batch as
columns (the kernels' input, :mod:`state.features`); :class:`TxnInput` is one
transaction for the per-transaction reference (:mod:`state.reference`).

**Unrated amounts** (issue 23). A transaction whose amount no rate converts
(:data:`topics.currency.UNRATED`, NaN) is scored like any other, with its amount
features at the spec's neutral values (:mod:`state.spec`), and the card state
learns no amount from it:

* the model's ``amount`` and ``log_amount`` inputs: the spec neutral of ``amount``
  (0, so ``log_amount`` is its neutral 0 too). Never a guess that could lower the
  score: on the committed model 0 scores at least as high as a typical amount;
* ``card_amount_ratio_30d`` 1 and ``card_amount_zscore_30d`` 0 (their neutrals:
  "as the card's usual amount");
* the card's bucket windows count it (``card_count_*``: card testing in a currency
  without a rate still shows in velocity) but learn no amount from it: sums, means
  and spread are over the transactions with an amount (each record keeps a ``rated``
  count, :mod:`state.kernels.card`), nor is it a small or zero-value transaction;
  its time, merchant, country and location update the card as any transaction's do;
* features of the card's history read before it are unchanged.

:attr:`FeatureInputs.amount` holds the model's value; :attr:`FeatureInputs.rated`
says which rows had a rate; :meth:`FeatureInputs.for_card_windows` gives the card
kernel NaN for the others, :attr:`FeatureInputs.reference_amount` the verdict's.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np

from state.spec import FEATURES, INDEX
from topics.contracts import Transaction

#: ``amount_of(txn)``: the transaction's amount in the reference currency, NaN when unrated.
AmountFn = Callable[[Transaction], float]
#: The model's ``amount`` input for an unrated transaction: the spec's neutral value.
NEUTRAL_AMOUNT: float = FEATURES[INDEX["amount"]].neutral
#: The features an unrated transaction gets at their neutral values (not measurements: a
#: reason code never names them for such a transaction, see :mod:`scoring.render`).
NEUTRAL_WHEN_UNRATED: frozenset[str] = frozenset(
    {"amount", "log_amount", "card_amount_ratio_30d", "card_amount_zscore_30d"})

#: Spec codes of ``channel`` and ``entry_mode`` (feature spec v2; 0 when absent).
CHANNEL_CODES: dict[str | None, float] = {None: 0.0, "pos": 1.0, "ecom": 2.0, "atm": 3.0,
                                          "moto": 4.0}
ENTRY_MODE_CODES: dict[str | None, float] = {None: 0.0, "chip": 1.0, "contactless": 2.0,
                                             "swipe": 3.0, "manual": 4.0, "ecom": 5.0}


@functools.lru_cache(maxsize=1 << 16)
def stable_hash(text: str) -> int:
    """Process-independent signed 64-bit hash of an id (Python's ``hash`` is salted)."""
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def country_code(country: str) -> int:
    """Two-letter country code as a small int (``"FR"`` -> 0x4652)."""
    return (ord(country[0]) << 8) | ord(country[1])


class _Countries(dict[str | None, int]):
    """``country -> code`` (-1 when absent), filled on first sight."""

    def __missing__(self, country: str | None) -> int:
        code = -1 if country is None else country_code(country)
        self[country] = code
        return code


_COUNTRY = _Countries()


@dataclass(frozen=True, slots=True)
class FeatureInputs:
    """What the features read from ``n`` transactions, one array each (the kernels' input).

    ``event_ms`` int64 epoch ms; ``amount`` float64 in the reference currency
    (:data:`NEUTRAL_AMOUNT` where not ``rated``); ``merchant`` int64
    :func:`stable_hash` of the merchant id; ``country`` int64 :func:`country_code`
    (-1 absent); ``lat``/``lon`` float64 (NaN absent); ``channel``/``entry_mode``
    float64 spec codes; ``rated`` bool: a rate converted the amount (see the module
    docstring for unrated rows).
    """

    event_ms: np.ndarray
    amount: np.ndarray
    merchant: np.ndarray
    country: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    channel: np.ndarray
    entry_mode: np.ndarray
    rated: np.ndarray

    @classmethod
    def of(cls, txns: Sequence[Transaction], amounts: np.ndarray | Sequence[float],
           event_ms: np.ndarray | Sequence[int] | None = None) -> FeatureInputs:
        """Columns of ``txns`` with their reference ``amounts`` (and effective event times).

        An amount of NaN (:data:`topics.currency.UNRATED`) makes the row unrated.
        """
        n = len(txns)
        country, channel, entry, merchant = _COUNTRY, CHANNEL_CODES, ENTRY_MODE_CODES, stable_hash
        cols: tuple[list[Any], ...] = ([], [], [], [], [], [], [])
        ms, ct, la, lo, ch, en, ev = cols
        for t in txns:  # one pass: cheaper than a numpy call per column for small batches
            ms.append(merchant(t.merchant_id))
            ct.append(country[t.country])
            la.append(t.lat)
            lo.append(t.lon)
            ch.append(channel[t.channel])
            en.append(entry[t.entry_mode])
            if event_ms is None:
                ev.append(t.event_time)
        reference = np.asarray(amounts, dtype=np.float64).reshape(n)
        rated = ~np.isnan(reference)
        return cls(
            event_ms=np.array(ev if event_ms is None else event_ms, dtype=np.int64).reshape(n),
            amount=reference if rated.all() else np.where(rated, reference, NEUTRAL_AMOUNT),
            merchant=np.array(ms, dtype=np.int64).reshape(n),
            country=np.array(ct, dtype=np.int64).reshape(n),
            lat=np.array(la, dtype=np.float64).reshape(n),
            lon=np.array(lo, dtype=np.float64).reshape(n),
            channel=np.array(ch, dtype=np.float64).reshape(n),
            entry_mode=np.array(en, dtype=np.float64).reshape(n),
            rated=rated,
        )

    def for_card_windows(self) -> FeatureInputs:
        """The card kernel's input: the same rows with NaN as the amount of unrated ones."""
        if self.rated.all():
            return self
        return replace(self, amount=self.reference_amount)

    @property
    def reference_amount(self) -> np.ndarray:
        """float64 reference amounts, NaN where no rate converted the amount (verdicts, rules)."""
        if self.rated.all():
            return self.amount
        return np.where(self.rated, self.amount, np.nan)

    def slice(self, start: int, stop: int) -> FeatureInputs:
        """Rows ``start:stop`` (views, no copy)."""
        return FeatureInputs(*(getattr(self, f)[start:stop] for f in self.__slots__))

    def __len__(self) -> int:
        return len(self.event_ms)

    def take(self, index: np.ndarray) -> FeatureInputs:
        """The rows at ``index`` (int array), in that order."""
        return FeatureInputs(*(getattr(self, f)[index] for f in self.__slots__))

    @classmethod
    def concat(cls, parts: Sequence[FeatureInputs]) -> FeatureInputs:
        """The rows of ``parts`` one after the other."""
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__slots__))


class TxnInput(NamedTuple):
    """What the features read from one transaction (the per-transaction reference's input)."""

    event_time: int
    """Epoch ms the windows use (the stream may clamp a time far ahead of its record)."""
    amount: float
    """Amount in the reference currency, major units (0 for a zero-value authorisation); NaN
    when no rate converted it (the reference then skips it as the kernels do)."""
    merchant_id: str
    country: str | None
    lat: float | None
    lon: float | None
    channel: str | None
    entry_mode: str | None


def txn_input(txn: Transaction, amount: float, event_time: int | None = None) -> TxnInput:
    """The feature input of ``txn`` with its reference ``amount`` (and effective event time)."""
    return TxnInput(
        txn.event_time if event_time is None else event_time, amount, txn.merchant_id,
        txn.country, txn.lat, txn.lon, txn.channel, txn.entry_mode,
    )
