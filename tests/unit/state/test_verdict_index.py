"""Verdicts indexed by transaction id in the partition store, joined with late labels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from state.options import StoreOptions
from state.store import PartitionStore, Rendered
from state.verdicts import VerdictRecord
from topics.contracts import Label, Transaction

DAY = 86_400_000
T0 = 1_700_000_000_000


def txn(i: int, t: int) -> Transaction:
    return Transaction(transaction_id=f"t{i}", card_id=f"c{i % 3}", merchant_id="m1",
                       amount=10.0 + i, currency="EUR", event_time=t)


def label(i: int, t: int, fraud: bool = True) -> Label:
    return Label(transaction_id=f"t{i}", card_id=f"c{i % 3}", merchant_id="m1",
                 is_fraud=fraud, label_time=t)


def score(store: PartitionStore, start: int, txns: list[Transaction]) -> None:
    """Render a verdict per transaction: score i/100, decision by parity, version v1."""

    def render(positions: Sequence[int], features: np.ndarray) -> Rendered:
        records = [
            VerdictRecord(txns[p].event_time, p / 100, ("approve", "decline")[p % 2], "v1")
            for p in positions
        ]
        return Rendered([b"x"] * len(positions), records)

    store.process_and_render([(start + i, t) for i, t in enumerate(txns)], render)


def test_label_returns_the_verdict_it_judges(tmp_path: Path) -> None:
    store = PartitionStore.open(tmp_path, 0)
    score(store, 0, [txn(0, T0), txn(1, T0 + 2 * DAY), txn(2, T0 + 9 * DAY)])
    labels = [label(1, T0 + 20 * DAY), label(2, T0 + 10 * DAY, fraud=False),
              label(9, T0 + 10 * DAY)]
    assert store.apply_labels(labels) == labels
    assert store.verdicts(labels) == [
        VerdictRecord(T0 + 2 * DAY, np.float32(0.01).item(), "decline", "v1"),
        VerdictRecord(T0 + 9 * DAY, np.float32(0.02).item(), "approve", "v1"),
        None,  # never scored here: unknown, not an error
    ]
    assert store.apply_labels([label(1, T0 + 21 * DAY)]) == []  # a repeat is not new


def test_verdicts_expire_after_the_horizon(tmp_path: Path) -> None:
    store = PartitionStore.open(tmp_path, 0, StoreOptions(verdict_horizon_ms=5 * DAY))
    score(store, 0, [txn(0, T0)])
    score(store, 1, [txn(1, T0 + 7 * DAY)])  # moves the horizon past t0's day
    found = store.verdicts([label(0, T0 + 1 * DAY), label(1, T0 + 8 * DAY)])
    assert [v is not None for v in found] == [False, True]


def test_index_survives_a_reopen_and_can_be_disabled(tmp_path: Path) -> None:
    store = PartitionStore.open(tmp_path / "on", 0)
    score(store, 0, [txn(0, T0)])
    store.close()
    reopened = PartitionStore.open(tmp_path / "on", 0)
    assert reopened.verdicts([label(0, T0 + DAY)])[0] is not None
    off = PartitionStore.open(tmp_path / "off", 0, StoreOptions(verdict_horizon_ms=0))
    score(off, 0, [txn(0, T0)])
    assert off.verdicts([label(0, T0 + DAY)]) == [None]
