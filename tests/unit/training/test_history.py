from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from topics.contracts import Label, Transaction
from training.history import DAY_MS, HistoryError, events, labels, load_history

HEADER = "transaction_id,card_id,merchant_id,amount,currency,event_time,country,is_fraud,label_time"
GOOD = [
    "t1,c1,m1,12.50,EUR,1736150400000,DE,false,",
    "t2,c1,m2,99.00,EUR,2025-01-06T09:00:00Z,FR,true,2025-01-09T00:00:00Z",
]
# (row, expected line, expected message fragment)
DEFECTS = [
    ("t3,c1,m1,,EUR,1736150400000,DE,false,", 4, "missing required field `amount`"),
    ("t4,c1,m1,-3,EUR,1736150400000,DE,false,", 5, "amount: expected `float` > 0.0"),
    ("t5,c1,m1,3,XYZ,1736150400000,DE,false,", 6, "currency: 'XYZ' is not an ISO 4217 code"),
    ("t6,c1,m1,3,EUR,yesterday,DE,false,", 7,
     "event_time: 'yesterday' is not RFC 3339 or epoch milliseconds"),
    ("t7,c1,m1,3,EUR,1736150400000,DE,maybe,", 8, "is_fraud: 'maybe' is not a boolean"),
    ("t8,c1,m1,abc,EUR,1736150400000,DE,false,", 9, "amount: 'abc' is not a number"),
    ("t9,c1,m1,3,EUR,1736150400000,DE,true,1736150399999", 10,
     "label_time: 1736150399999 is before event_time 1736150400000"),
    ("t1,c1,m1,3,EUR,1736150400000,DE,false,", 11, "transaction_id: 't1' repeats line 2"),
    ("t11,c1,m1,3,EUR,1736150400000,ZZ,false,", 12,
     "country: 'ZZ' is not an ISO 3166-1 alpha-2 code"),
    ("t12,c1,m1,3,EUR,2025-01-06T09:00:00,DE,false,", 13, "has no UTC offset"),
    ("t13,c1,m1,3,EUR,1736150400,DE,false,", 14, "before 2000-01-01"),
]


def _csv(rows: list[str], header: str = HEADER) -> io.BytesIO:
    return io.BytesIO(("\n".join([header, *rows]) + "\n").encode())


def test_good_csv_defaults_label_delay_and_orders_events() -> None:
    h = load_history(_csv(GOOD), fmt="csv", label_delay_days=7)
    assert [t.transaction_id for t in h.transactions] == ["t1", "t2"]
    assert h.is_fraud.tolist() == [False, True]
    assert h.label_time[0] == 1736150400000 + 7 * DAY_MS  # default delay
    assert h.label_time[1] == 1736380800000  # 2025-01-09T00:00Z
    assert h.transactions[1].event_time == 1736154000000  # RFC 3339 parsed
    evs = list(events(h))
    assert [type(e) for e in evs] == [Transaction, Transaction, Label]
    assert isinstance(evs[2], Label) and evs[2].transaction_id == "t2" and evs[2].is_fraud
    assert len(list(labels(h, legit_labels=True))) == 2


def test_every_defect_is_reported_with_line_column_and_rule() -> None:
    with pytest.raises(HistoryError) as err:
        load_history(_csv(GOOD + [row for row, _, _ in DEFECTS]), fmt="csv")
    problems = err.value.problems
    assert len(problems) == len(DEFECTS)
    for problem, (_, line, fragment) in zip(problems, DEFECTS, strict=True):
        assert problem.startswith(f"line {line}: "), problem
        assert fragment in problem, problem


def test_missing_column_is_named() -> None:
    header = HEADER.replace(",currency", "")
    with pytest.raises(HistoryError, match="missing required column `currency`"):
        load_history(_csv(["t1,c1,m1,12.5,1736150400000,DE,false,"], header), fmt="csv")


def test_parquet_rows_are_numbered_from_one_and_types_checked(tmp_path: Path) -> None:
    df = pd.DataFrame({
        "transaction_id": ["t1", "t2"], "card_id": ["c1", "c1"], "merchant_id": ["m1", "m1"],
        "amount": ["12.5", "3"],  # strings: wrong type in Parquet
        "currency": ["EUR", "EUR"], "event_time": [1736150400000, 1736150400001],
        "is_fraud": [False, True],
    })
    path = tmp_path / "h.parquet"
    df.to_parquet(path)
    with pytest.raises(HistoryError) as err:
        load_history(path)
    assert err.value.problems[0].startswith("row 1: amount: expected `float`, got `str`")
    assert err.value.problems[1].startswith("row 2: ")
    assert str(path) in str(err.value)


def test_parquet_utc_timestamps_are_accepted(tmp_path: Path) -> None:
    df = pd.DataFrame({
        "transaction_id": ["t1"], "card_id": ["c1"], "merchant_id": ["m1"], "amount": [5.0],
        "currency": ["EUR"], "event_time": pd.to_datetime(["2025-01-06T08:00:00Z"], utc=True),
        "is_fraud": [True],
    })
    df.to_parquet(tmp_path / "h.parquet")
    h = load_history(tmp_path / "h.parquet", label_delay_days=1)
    assert h.transactions[0].event_time == 1736150400000
    assert h.label_time[0] == 1736150400000 + DAY_MS
