"""The per-transaction feature path: read a transaction's spec row, then apply it to the state.

The reference of :mod:`state.features` (the batch kernels): same groups, same
order, one transaction at a time over :class:`~state.reference.card.CardState`
and :class:`~state.reference.merchant.MerchantState`.
"""

from __future__ import annotations

import math

from state.inputs import CHANNEL_CODES, ENTRY_MODE_CODES, NEUTRAL_AMOUNT, TxnInput
from state.reference.card import CardState
from state.reference.merchant import MerchantState
from state.units import DAY_MS, HOUR_MS


def context_features(txn: TxnInput) -> list[float]:
    """Features of the transaction alone (the spec's context group, in order)."""
    t = txn.event_time
    hour = (t // HOUR_MS) % 24
    dow = (t // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    amount = NEUTRAL_AMOUNT if math.isnan(txn.amount) else txn.amount  # unrated: state.inputs
    return [
        amount,
        math.log1p(amount),
        float(hour),
        float(dow),
        1.0 if dow >= 5 else 0.0,
        1.0 if hour < 6 else 0.0,
        CHANNEL_CODES[txn.channel],
        ENTRY_MODE_CODES[txn.entry_mode],
    ]


def card_step(card: CardState, txn: TxnInput) -> list[float]:
    """The card group of ``txn``'s row as of just before it; then apply ``txn`` to the card."""
    row = card.features(txn)
    card.update(txn)
    return row


def merchant_step(merchant: MerchantState, txn: TxnInput) -> list[float]:
    """The merchant and context groups of ``txn``'s row as of just before it; then count it."""
    row = merchant.features(txn)
    merchant.update(txn)
    row += context_features(txn)
    return row
