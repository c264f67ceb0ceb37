"""``just score-file`` equals the offline replay scored by the same model, reasons included."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from export.model import load_model
from export.release import release
from scoring.reasons import ReasonExplainer
from training.features import point_in_time_features
from training.history import from_frame, load_history
from training.score_file import main
from training.simulate import SimConfig, simulate

WORLD = SimConfig(n_transactions=3_000, n_cards=150, days=20, seed=23, fraud_rate=0.03)


@pytest.fixture(scope="module")
def model_dir(tiny: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sf") / "models"
    release(tiny.trained, root, version="v-sf")
    return root / "current"


def expected(frame: pd.DataFrame,
             model: Any) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    history = from_frame(frame)
    X = point_in_time_features(history)
    scores = model.predict(X)
    decisions = model.decide(scores)
    flagged = np.flatnonzero(decisions != "approve")
    reasons = [""] * len(X)
    for i, codes in zip(flagged, ReasonExplainer(model, 3).explain(X[flagged], scores[flagged]),
                        strict=True):
        reasons[i] = ",".join(c.feature for c in codes)
    return [t.transaction_id for t in history.transactions], scores, decisions, reasons


def test_parquet_with_labels_equals_offline_replay(model_dir: Path, tmp_path: Path) -> None:
    frame = simulate(WORLD)
    frame.to_parquet(tmp_path / "txns.parquet", index=False)
    assert main(["--data", str(tmp_path / "txns.parquet"), "--out", str(tmp_path / "v.parquet"),
                 "--model", str(model_dir)]) == 0
    out = pq.read_table(tmp_path / "v.parquet").to_pandas()
    model = load_model(model_dir)
    ids, scores, decisions, reasons = expected(frame, model)
    assert out["transaction_id"].tolist() == ids
    assert np.array_equal(out["score"].to_numpy(np.float32), scores)  # bit-identical
    assert out["decision"].tolist() == decisions.tolist()
    assert out["reason_features"].tolist() == reasons
    assert set(out["model_version"]) == {"v-sf"}
    flagged = out[out["decision"] != "approve"]
    assert len(flagged) > 0 and all(len(r) >= 1 for r in flagged["reasons"])
    assert all(len(r) == 0 for r in out[out["decision"] == "approve"]["reasons"])
    first = flagged["reasons"].iloc[0][0]
    assert set(first) == {"feature", "text"} and first["text"]


def test_csv_without_labels_scores_as_a_stream_without_a_labels_topic(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = simulate(WORLD)
    txns = frame.drop(columns=[c for c in ("is_fraud", "label_time", "scenario")
                               if c in frame.columns])
    txns.to_csv(tmp_path / "txns.csv", index=False)
    assert main(["--data", str(tmp_path / "txns.csv"), "--out", str(tmp_path / "v.csv"),
                 "--model", str(model_dir)]) == 0
    out = pd.read_csv(tmp_path / "v.csv", keep_default_na=False)
    unlabelled = frame.assign(is_fraud=False)
    ids, scores, decisions, reasons = expected(unlabelled, load_model(model_dir))
    assert out["transaction_id"].tolist() == ids
    assert np.allclose(out["score"].to_numpy(np.float64), scores, rtol=0, atol=1e-7)
    assert out["decision"].tolist() == decisions.tolist()
    assert [",".join(r["feature"] for r in json.loads(x)) for x in out["reasons"]] == reasons
    err = capsys.readouterr().err
    assert f"] wrote {len(ids):,} verdicts to {tmp_path / 'v.csv'}: approve" in err
    # bad input: one line naming the row and the rule, exit 2
    txns.assign(amount=-1.0).head(3).to_csv(tmp_path / "bad.csv", index=False)
    assert main(["--data", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "x.csv"),
                 "--model", str(model_dir)]) == 2
    assert "line 2: amount" in capsys.readouterr().err


def test_history_loader_still_validates(tmp_path: Path) -> None:
    frame = simulate(WORLD).head(10)
    frame.to_parquet(tmp_path / "h.parquet", index=False)
    assert len(load_history(tmp_path / "h.parquet")) == 10
