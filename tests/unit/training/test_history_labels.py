"""The exported history takes each transaction's label in force, as the stream does."""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from topics.contracts import Label, Transaction
from training.history_export import build_history

T0 = 1_795_917_600_000
HOUR = 3_600_000


class Rec(NamedTuple):
    value: bytes
    timestamp_ms: int
    partition: int = 0
    offset: int = 0


def _txn(tid: str) -> Rec:
    return Rec(msgspec.json.encode(Transaction(
        transaction_id=tid, card_id="c-" + tid, merchant_id="m-x", amount=30.0,
        currency="EUR", event_time=T0)), T0)


def _label(tid: str, is_fraud: bool, at: int, offset: int) -> Rec:
    return Rec(msgspec.json.encode(Label(transaction_id=tid, card_id="c-" + tid,
                                         merchant_id="m-x", is_fraud=is_fraud, label_time=at)),
               at, offset=offset)


def test_a_reversed_chargeback_is_exported_as_not_fraud_whatever_the_read_order() -> None:
    labels = [_label("t-x", True, T0 + 2 * HOUR, 0), _label("t-x", True, T0 + 2 * HOUR, 1),
              _label("t-x", False, T0 + 4 * HOUR, 2),
              _label("t-y", False, T0 + 2 * HOUR, 3), _label("t-y", True, T0 + 5 * HOUR, 4),
              _label("t-z", False, T0 + 2 * HOUR, 5), _label("t-z", True, T0 + 2 * HOUR, 6)]
    for order in (labels, labels[::-1]):
        cols, stats = build_history([_txn("t-x"), _txn("t-y"), _txn("t-z")], order, 0,
                                    T0 + 10 * HOUR, T0 + 10 * HOUR, now_ms=T0 + 10 * HOUR)
        got = dict(zip(cols["transaction_id"], zip(cols["is_fraud"], cols["label_time"],
                                                   strict=True), strict=True))
        assert got["t-x"] == (False, T0 + 4 * HOUR)  # the analyst's reversal is in force
        assert got["t-y"] == (True, T0 + 5 * HOUR)  # confirmed fraud later
        assert got["t-z"] == (True, T0 + 2 * HOUR)  # a tie: fraud wins, in either order
        assert stats.fraud == 2 and stats.legit_labelled == 1
