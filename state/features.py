"""The one feature path: read a transaction's spec row, then apply it to the state.

Both :mod:`state.replay` (training) and the stream's stores
(:mod:`state.card_store`, :mod:`state.merchant_store`) call these functions, so
the rows agree bit for bit for the same history in the same order.

A row has three groups (:data:`CARD_COLUMNS`, :data:`MERCHANT_COLUMNS`,
:data:`CONTEXT_COLUMNS`): the card stage computes the first, the merchant stage
the second and third. Features read a :class:`TxnInput`, not the wire
contract: the amount is already in the reference currency and the event time is
the one the stream uses (see :func:`txn_input`).
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator
from contextlib import contextmanager

from state.card import DAY_MS, HOUR_MS, CardState
from state.inputs import AmountFn, TxnInput, txn_input
from state.merchant import MerchantState
from state.spec import FEATURE_NAMES, N_FEATURES

__all__ = ["AmountFn", "TxnInput", "txn_input", "card_step", "merchant_step",
           "context_features", "gc_paused", "CARD_COLUMNS", "MERCHANT_COLUMNS",
           "CONTEXT_COLUMNS", "MERCHANT_STAGE_WIDTH", "CHANNEL_CODES", "ENTRY_MODE_CODES"]

CHANNEL_CODES: dict[str | None, float] = {None: 0.0, "pos": 1.0, "ecom": 2.0, "atm": 3.0,
                                          "moto": 4.0}
ENTRY_MODE_CODES: dict[str | None, float] = {None: 0.0, "chip": 1.0, "contactless": 2.0,
                                             "swipe": 3.0, "manual": 4.0, "ecom": 5.0}

@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while state objects churn.

    State objects hold no reference cycles, and GC passes over millions of live
    bucket lists cost more than the feature work itself.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def context_features(txn: TxnInput) -> list[float]:
    """Features of the transaction alone (the spec's context group, in order)."""
    t = txn.event_time
    hour = (t // HOUR_MS) % 24
    dow = (t // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    return [
        txn.amount,
        math.log1p(txn.amount),
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


def _group_width(prefix: str) -> int:
    names = [n.startswith(prefix) for n in FEATURE_NAMES]
    start, width = names.index(True), sum(names)
    if not all(names[start : start + width]):
        raise AssertionError(f"spec group {prefix!r} is not contiguous")
    return width


#: Column slices of the three groups in a spec row: card, merchant, context.
CARD_COLUMNS = slice(0, _group_width("card_"))
MERCHANT_COLUMNS = slice(CARD_COLUMNS.stop, CARD_COLUMNS.stop + _group_width("merchant_"))
CONTEXT_COLUMNS = slice(MERCHANT_COLUMNS.stop, N_FEATURES)
#: Width of the merchant stage's part of a row (merchant and context groups).
MERCHANT_STAGE_WIDTH = N_FEATURES - CARD_COLUMNS.stop
