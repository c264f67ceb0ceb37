"""What the features read from a transaction: :class:`TxnInput`, built once per transaction.

The feature code (:mod:`state.card`, :mod:`state.merchant`, :mod:`state.features`)
reads this, not the wire contract: the amount is already in the reference
currency and the event time is the one the stream uses (clamped when it ran
ahead of its record's Kafka timestamp).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from topics.contracts import Transaction

#: ``amount_of(txn)``: the transaction's amount in the reference currency.
AmountFn = Callable[[Transaction], float]


class TxnInput(NamedTuple):
    """What the features read from one transaction."""

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
