"""What the features read from transactions: columns for the kernels, one tuple for the reference.

The feature code reads these, not the wire contract: the amount is already in the
reference currency and the event time is the one the stream uses (clamped when it
ran ahead of its record's Kafka timestamp). :class:`FeatureInputs` is a batch as
columns (the kernels' input, :mod:`state.features`); :class:`TxnInput` is one
transaction for the per-transaction reference (:mod:`state.reference`).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from topics.contracts import Transaction

#: ``amount_of(txn)``: the transaction's amount in the reference currency.
AmountFn = Callable[[Transaction], float]

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

    ``event_ms`` int64 epoch ms; ``amount`` float64 in the reference currency;
    ``merchant`` int64 :func:`stable_hash` of the merchant id; ``country`` int64
    :func:`country_code` (-1 absent); ``lat``/``lon`` float64 (NaN absent);
    ``channel``/``entry_mode`` float64 spec codes.
    """

    event_ms: np.ndarray
    amount: np.ndarray
    merchant: np.ndarray
    country: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    channel: np.ndarray
    entry_mode: np.ndarray

    @classmethod
    def of(cls, txns: Sequence[Transaction], amounts: np.ndarray | Sequence[float],
           event_ms: np.ndarray | Sequence[int] | None = None) -> FeatureInputs:
        """Columns of ``txns`` with their reference ``amounts`` (and effective event times)."""
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
        return cls(
            event_ms=np.array(ev if event_ms is None else event_ms, dtype=np.int64).reshape(n),
            amount=np.asarray(amounts, dtype=np.float64),
            merchant=np.array(ms, dtype=np.int64).reshape(n),
            country=np.array(ct, dtype=np.int64).reshape(n),
            lat=np.array(la, dtype=np.float64).reshape(n),
            lon=np.array(lo, dtype=np.float64).reshape(n),
            channel=np.array(ch, dtype=np.float64).reshape(n),
            entry_mode=np.array(en, dtype=np.float64).reshape(n),
        )

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
    """Amount in the reference currency, major units (0 for a zero-value authorisation)."""
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
