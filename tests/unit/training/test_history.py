from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from topics.contracts import Label, Transaction
from training.history import (
    DAY_MS,
    MAX_PROBLEMS,
    HistoryError,
    events,
    from_frame,
    labels,
    load_history,
)

HEADER = "transaction_id,card_id,merchant_id,amount,currency,event_time,country,is_fraud,label_time"
GOOD = [
    "t1,c1,m1,12.50,EUR,1736150400000,DE,false,",
    "t2,c1,m2,99.00,EUR,2025-01-06T09:00:00Z,FR,true,2025-01-09T00:00:00Z",
]
# (row, expected line, expected message fragment, column: rule)
DEFECTS = [
    ("t3,c1,m1,,EUR,1736150400000,DE,false,", 4, "missing required field `amount`",
     "amount: missing_field"),
    ("t4,c1,m1,-3,EUR,1736150400000,DE,false,", 5, "amount: expected `float` >",
     "amount: invalid_value"),
    ("t5,c1,m1,3.5,JPY,1736150400000,DE,false,", 6, "JPY's ISO 4217 minor units (0)",
     "amount: amount_precision"),
    ("t6,c1,m1,3,EUR,yesterday,DE,false,", 7,
     "event_time: 'yesterday' is not RFC 3339 or epoch milliseconds", "event_time: bad_event_time"),
    ("t7,c1,m1,3,EUR,1736150400000,DE,maybe,", 8, "is_fraud: 'maybe' is not a boolean",
     "is_fraud: not_a_boolean"),
    ("t8,c1,m1,abc,EUR,1736150400000,DE,false,", 9, "amount: 'abc' is not a number",
     "amount: not_a_number"),
    ("t9,c1,m1,3,EUR,1736150400000,DE,true,1736150399999", 10,
     "label_time: 1736150399999 is before event_time 1736150400000",
     "label_time: label_before_event"),
    ("t1,c1,m1,3,EUR,1736150400000,DE,false,", 11,
     "transaction_id: 't1' repeats line 2 with a different body (amount)",
     "transaction_id: duplicate_conflict"),
    ("t11,c1,m1,3,EUR,1736150400000,ZZ,false,", 12,
     "country: 'ZZ' is not an ISO 3166-1 alpha-2 code", "country: unknown_country"),
    ("t12,c1,m1,3,EUR,2025-01-06T09:00:00,DE,false,", 13, "has no UTC offset",
     "event_time: bad_event_time"),
    ("t13,c1,m1,3,EUR,1736150400,DE,false,", 14, "before 2000-01-01",
     "event_time: bad_event_time"),
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
    assert h.ingest_time is None
    assert h.hygiene is not None and h.hygiene.rows_kept == 2 and h.hygiene.skipped == 0
    evs = list(events(h))
    assert [type(e) for e in evs] == [Transaction, Transaction, Label]
    assert isinstance(evs[2], Label) and evs[2].transaction_id == "t2" and evs[2].is_fraud
    assert len(list(labels(h, legit_labels=True))) == 2


def test_every_defect_is_reported_with_line_column_and_rule() -> None:
    with pytest.raises(HistoryError) as err:
        load_history(_csv(GOOD + [d[0] for d in DEFECTS]), fmt="csv")
    problems = err.value.problems
    assert len(problems) == len(DEFECTS)
    for problem, (_, line, fragment, _) in zip(problems, DEFECTS, strict=True):
        assert problem.startswith(f"line {line}: "), problem
        assert fragment in problem, problem
    assert "--skip-invalid" in err.value.headline and "\n" not in err.value.headline


def test_skip_invalid_counts_per_rule_and_lists_line_column_rule() -> None:
    h = load_history(_csv(GOOD + [d[0] for d in DEFECTS]), fmt="csv", skip_invalid=True)
    assert [t.transaction_id for t in h.transactions] == ["t1", "t2"]
    hy = h.hygiene
    assert hy is not None
    assert (hy.rows_read, hy.rows_kept, hy.skipped, hy.duplicates) == (13, 2, len(DEFECTS), 0)
    expected: dict[str, int] = {}
    for d in DEFECTS:
        expected[d[3]] = expected.get(d[3], 0) + 1
    assert hy.skipped_by_rule == expected
    listed = [(p.where, f"{p.column}: {p.rule}") for p in hy.skipped_examples]
    assert listed == [(f"line {d[1]}", d[3]) for d in DEFECTS]
    assert all(d[2] in p.message for p, d in zip(hy.skipped_examples, DEFECTS, strict=True))
    assert hy.to_dict()["skipped"] == len(DEFECTS)


def test_skip_invalid_lists_the_first_rows_but_counts_all() -> None:
    bad = [f"b{i},c1,m1,-1,EUR,1736150400000,DE,false," for i in range(MAX_PROBLEMS + 15)]
    h = load_history(_csv(GOOD + bad), fmt="csv", skip_invalid=True)
    assert h.hygiene is not None
    assert h.hygiene.skipped_by_rule == {"amount: invalid_value": MAX_PROBLEMS + 15}
    assert len(h.hygiene.skipped_examples) == MAX_PROBLEMS
    assert h.hygiene.skipped_examples[-1].where == f"line {MAX_PROBLEMS + 3}"


def test_a_file_with_no_usable_row_is_refused_even_when_skipping() -> None:
    with pytest.raises(HistoryError, match="no usable row"):
        load_history(_csv(["t1,c1,m1,-1,EUR,1736150400000,DE,false,"]), fmt="csv",
                     skip_invalid=True)


def test_exact_repeats_are_dropped_and_counted_like_the_stream() -> None:
    rows = GOOD + [
        "t1,c1,m1,12.5,EUR,2025-01-06T08:00:00Z,DE,false,",  # same body, other spelling
        "t2,c1,m2,99,EUR,1736154000000,FR,yes,1736380800000",  # same body and label
        "t1,c1,m1,12.50,EUR,1736150400000,DE,0,",
    ]
    h = load_history(_csv(rows), fmt="csv")
    assert [t.transaction_id for t in h.transactions] == ["t1", "t2"]
    assert h.hygiene is not None and h.hygiene.duplicates == 3 and h.hygiene.skipped == 0
    assert h.hygiene.duplicate_examples[0].startswith("line 4: transaction_id 't1' repeats "
                                                      "line 2 exactly")


def test_conflicting_repeats_are_refused_or_skipped_with_the_first_kept() -> None:
    rows = GOOD + [
        "t1,c1,m9,12.50,EUR,1736150400000,DE,false,",  # other merchant: body conflict
        "t2,c1,m2,99.00,EUR,1736154000000,FR,false,",  # same body, label differs
    ]
    with pytest.raises(HistoryError) as err:
        load_history(_csv(rows), fmt="csv")
    assert err.value.problems == [
        "line 4: transaction_id: 't1' repeats line 2 with a different body (merchant_id)",
        "line 5: transaction_id: 't2' repeats line 3 with a different label "
        "(is_fraud or label_time)",
    ]
    h = load_history(_csv(rows), fmt="csv", skip_invalid=True)
    assert [t.merchant_id for t in h.transactions] == ["m1", "m2"]  # first occurrence wins
    assert h.is_fraud.tolist() == [False, True]
    assert h.hygiene is not None and h.hygiene.skipped_by_rule == {
        "transaction_id: duplicate_conflict": 1, "transaction_id: label_conflict": 1}


def test_missing_column_is_named() -> None:
    header = HEADER.replace(",currency", "")
    with pytest.raises(HistoryError, match="missing required column `currency`"):
        load_history(_csv(["t1,c1,m1,12.5,1736150400000,DE,false,"], header), fmt="csv")


def test_billing_columns_reach_the_transaction() -> None:
    if "billing_amount" not in Transaction.__struct_fields__:
        pytest.skip("the transactions contract has no billing_amount/billing_currency yet "
                    "(the payments helper adds them)")
    header = HEADER + ",billing_amount,billing_currency"
    rows = ["t1,c1,m1,1500,JPY,1736150400000,JP,false,,9.80,EUR",
            "t2,c1,m2,12.50,EUR,1736150400001,DE,false,,,",
            "t3,c1,m2,12.50,EUR,1736150400002,DE,false,,abc,EUR"]
    with pytest.raises(HistoryError, match="line 4: billing_amount: 'abc' is not a number"):
        load_history(_csv(rows, header), fmt="csv")
    h = load_history(_csv(rows[:2], header), fmt="csv")
    t1, t2 = h.transactions
    assert (t1.billing_amount, t1.billing_currency) == (9.8, "EUR")
    assert (t2.billing_amount, t2.billing_currency) == (None, None)


def test_ingest_time_is_kept_and_judges_event_time_like_the_stream() -> None:
    header = HEADER + ",ingest_time"
    base = 1736150400000
    rows = [f"t1,c1,m1,5,EUR,{base},DE,false,,{base + 1000}",
            f"t2,c1,m1,5,EUR,{base + 10},DE,false,,",  # no ingest time: its event time
            f"t3,c1,m1,5,EUR,{base + 20},DE,false,,2025-01-06T08:00:01Z",
            # 30 days ahead of the record timestamp: the stream would refuse it
            f"t4,c1,m1,5,EUR,{base + 30 * DAY_MS},DE,false,,{base}",
            f"t5,c1,m1,5,EUR,{base},DE,false,,soon"]
    h = load_history(_csv(rows, header), fmt="csv", skip_invalid=True)
    assert [t.transaction_id for t in h.transactions] == ["t1", "t2", "t3"]
    assert h.ingest_time is not None
    assert h.ingest_time.tolist() == [base + 1000, base + 10, base + 1000]
    assert h.hygiene is not None
    rules = {p.where: f"{p.column}: {p.rule}" for p in h.hygiene.skipped_examples}
    assert rules["line 5"].startswith("event_time: ")
    assert rules["line 6"] == "ingest_time: bad_ingest_time"


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


def test_from_frame_de_duplicates_like_the_loader() -> None:
    base = 1736150400000
    df = pd.DataFrame({
        "transaction_id": ["a", "b", "a", "b", "c"], "card_id": ["c1"] * 5,
        "merchant_id": ["m1", "m1", "m1", "m2", "m1"], "amount": [1.0, 2.0, 1.0, 2.0, 3.0],
        "currency": ["EUR"] * 5, "event_time": [base, base + 1, base, base + 1, base + 2],
        "is_fraud": [False, True, False, True, False],
        "label_time": [base + DAY_MS, base + DAY_MS, base + DAY_MS, base + DAY_MS, base + DAY_MS],
        "scenario": [None, "card_testing", None, "card_testing", None],
    })
    h = from_frame(df.assign(ingest_time=[base + 5, None, base + 5, None, None]))
    assert [t.transaction_id for t in h.transactions] == ["a", "b", "c"]
    assert h.ingest_time is not None and h.ingest_time.tolist() == [base + 5, base + 1, base + 2]
    assert h.transactions[1].merchant_id == "m1"  # the first "b" wins over the conflict
    assert h.is_fraud.tolist() == [False, True, False]
    assert h.scenario == [None, "card_testing", None]
    assert h.hygiene is not None and h.hygiene.duplicates == 1
    assert h.hygiene.skipped_by_rule == {"transaction_id: duplicate_conflict": 1}
    assert np.array_equal(h.event_time, [base, base + 1, base + 2])
