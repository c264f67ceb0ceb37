"""The one feature path: read a transaction's spec-v1 row, then apply it to the state.

Both :mod:`state.replay` (training) and :mod:`state.store` (streaming) call
:func:`step`, so the rows agree bit for bit for the same history.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator
from contextlib import contextmanager

from state.card import DAY_MS, HOUR_MS, CardState
from state.merchant import MerchantState
from state.spec import FEATURE_NAMES, N_FEATURES
from topics.contracts import Transaction

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


def context_features(txn: Transaction) -> list[float]:
    """Features of the transaction alone (spec v1 context group, in order)."""
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


def card_step(card: CardState, txn: Transaction) -> list[float]:
    """The card group of ``txn``'s row as of just before it; then apply ``txn`` to the card."""
    row = card.features(txn)
    card.update(txn)
    return row


def merchant_step(merchant: MerchantState, txn: Transaction) -> list[float]:
    """The merchant group of ``txn``'s row as of just before it; then count ``txn``."""
    row = merchant.features(txn)
    merchant.update(txn)
    return row


def step(card: CardState, merchant: MerchantState, txn: Transaction) -> list[float]:
    """Return ``txn``'s full row as of just before it, then apply ``txn`` to both states.

    Card and merchant states are independent, so the groups may also be computed
    separately (:mod:`state.replay` does, card by card) with identical results.
    """
    return card_step(card, txn) + merchant_step(merchant, txn) + context_features(txn)


def _group_width(prefix: str) -> int:
    names = [n.startswith(prefix) for n in FEATURE_NAMES]
    start, width = names.index(True), sum(names)
    if not all(names[start : start + width]):
        raise AssertionError(f"spec group {prefix!r} is not contiguous")
    return width


#: Column slices of the three groups in a spec-v1 row: card, merchant, context.
CARD_COLUMNS = slice(0, _group_width("card_"))
MERCHANT_COLUMNS = slice(CARD_COLUMNS.stop, CARD_COLUMNS.stop + _group_width("merchant_"))
CONTEXT_COLUMNS = slice(MERCHANT_COLUMNS.stop, N_FEATURES)
