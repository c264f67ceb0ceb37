"""``just drift-report`` end to end: a tiny model published by our export code, its reference
rows, samples written by the flow's SampleWriter from state-replayed features and ONNX scores."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from drift.samples import SampleWriter
from export.model import load_model
from state.spec import FEATURE_NAMES
from tiny_model import tiny_history
from training.drift_report import build_report, load_reference, load_samples, main
from training.features import point_in_time_features

#: features a shift of amounts moves (the rest of the vector stays as it was)
AMOUNT_FEATURES = ("amount", "log_amount", "card_amount_sum_1h", "card_amount_sum_24h",
                   "card_amount_mean_24h", "card_amount_mean_7d", "card_amount_mean_30d",
                   "card_amount_std_30d")


@pytest.fixture(scope="module")
def world() -> tuple[pd.DataFrame, np.ndarray]:
    """The tiny history's last third (unseen by training) and its point-in-time features."""
    history = tiny_history()
    X = point_in_time_features(history)
    rows = np.arange(len(history))[-len(history) // 3:]
    frame = pd.DataFrame({
        "transaction_id": [history.transactions[i].transaction_id for i in rows],
        "event_time": history.event_time[rows],
        "is_fraud": history.is_fraud[rows].astype(bool),
    })
    return frame, X[rows]


def write_samples(directory: Path, model_dir: Path, frame: pd.DataFrame, X: np.ndarray) -> None:
    """Score ``X`` with the published ONNX model and feed the flow's writer in batches of 256."""
    model = load_model(model_dir)
    writer = SampleWriter(directory, shard=0, rate=0.6, flush_rows=500)
    for lo in range(0, len(frame), 256):
        part, x = frame.iloc[lo:lo + 256], X[lo:lo + 256]
        scores = model.predict(x)
        positions = list(range(lo, lo + len(part)))
        writer.offer(positions, [0] * len(part), positions, part["transaction_id"].tolist(),
                     part["event_time"].to_numpy(), x, scores, model.decide(scores),
                     model.version)
    writer.flush()


def test_export_publishes_scored_labelled_reference_rows(tiny_model_dir: Path) -> None:
    ref = load_reference(tiny_model_dir)
    assert list(ref.columns) == [*FEATURE_NAMES, "score", "decision", "is_fraud"]
    model = load_model(tiny_model_dir)
    X = ref[list(FEATURE_NAMES)].to_numpy(np.float32)
    np.testing.assert_array_equal(ref["score"].to_numpy(), model.predict(X))
    assert ref["decision"].tolist() == model.decide(ref["score"].to_numpy()).tolist()
    assert ref["is_fraud"].dtype == bool and 0 < ref["is_fraud"].sum() < len(ref)


def test_report_html_and_a_shift_drifts_more_columns(
    tiny_model_dir: Path, world: tuple[pd.DataFrame, np.ndarray], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    frame, X = world
    write_samples(tmp_path / "samples" / "run1", tiny_model_dir, frame, X)
    labels = tmp_path / "labels.csv"
    frame[["transaction_id", "is_fraud"]].to_csv(labels, index=False)
    out = tmp_path / "report.html"

    assert main(["--model", str(tiny_model_dir), "--samples", str(tmp_path / "samples"),
                 "--labels", str(labels), "--out", str(out)]) == 0
    html = out.read_text()
    assert len(html) > 100_000 and "drift" in html.lower() and "Precision" in html
    said = capsys.readouterr().out
    assert f"wrote {out}" in said
    columns = len(FEATURE_NAMES) + 2  # the features, the score and the decision
    calm = re.search(rf"drifted columns: (\d+) of {columns} \(\d+%\)(?::| *\n)(.*)", said)
    assert calm is not None, said
    calm_drifted = calm.group(2).split(", ") if int(calm.group(1)) else []
    assert len(calm_drifted) == int(calm.group(1))
    assert re.search(r"Precision [01]\.\d{3}, Recall [01]\.\d{3}, F1Score [01]\.\d{3}, "
                     r"RocAuc [01]\.\d{3} \(\d+ rows, [1-9]\d* labelled fraud\)", said), said

    # amounts x5: features and scores of the shifted rows drift, the report sees more of it
    shifted = X.copy()
    for name in AMOUNT_FEATURES:
        shifted[:, FEATURE_NAMES.index(name)] *= 5
    write_samples(tmp_path / "shifted", tiny_model_dir, frame, shifted)
    model = load_model(tiny_model_dir)
    moved = load_samples(tmp_path / "shifted", FEATURE_NAMES, model.version)
    assert 0.5 * len(frame) < len(moved) < 0.7 * len(frame)
    _, drifted = build_report(load_reference(tiny_model_dir), moved, FEATURE_NAMES,
                              model.thresholds.review)
    assert drifted.quality is None and drifted.columns == (*FEATURE_NAMES, "score", "decision")
    assert set(AMOUNT_FEATURES) <= set(drifted.drifted)
    assert not set(AMOUNT_FEATURES) <= set(calm_drifted)
    assert len(drifted.drifted) > len(calm_drifted)


def test_replayed_samples_are_counted_once_and_windowed(
    tiny_model_dir: Path, world: tuple[pd.DataFrame, np.ndarray], tmp_path: Path,
) -> None:
    frame, X = world
    write_samples(tmp_path / "a", tiny_model_dir, frame, X)
    write_samples(tmp_path / "b", tiny_model_dir, frame, X)  # a replay into a second place
    version = load_model(tiny_model_dir).version
    once = load_samples(tmp_path / "a", FEATURE_NAMES, version)
    both = load_samples(tmp_path, FEATURE_NAMES, version)
    assert len(both) == len(once) and both["transaction_id"].is_unique
    last_day = load_samples(tmp_path, FEATURE_NAMES, version, window_minutes=24 * 60)
    end = int(both["event_time"].max())
    assert last_day["event_time"].min() >= end - 86_400_000
    assert len(last_day) == int((both["event_time"] >= end - 86_400_000).sum()) < len(both)


def test_errors_name_the_fix(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--model", str(tiny_model_dir), "--samples", str(tmp_path / "none")]) == 2
    assert "FRAUD_SAMPLE_DIR" in capsys.readouterr().err

    old = tmp_path / "old-version"
    old.mkdir()
    (old / "model.onnx").write_bytes((tiny_model_dir / "model.onnx").read_bytes())
    assert main(["--model", str(old), "--samples", str(tmp_path)]) == 2
    assert "just export-onnx --version <new>" in capsys.readouterr().err

    frame = pq.read_table(tiny_model_dir / "reference.parquet").slice(0, 5).to_pandas()
    frame.insert(0, "transaction_id", [f"t{i}" for i in range(5)])
    frame["event_time"], frame["model_version"] = 0, "another-version"
    (tmp_path / "s").mkdir()
    frame.to_parquet(tmp_path / "s" / "x.parquet")
    assert main(["--model", str(tiny_model_dir), "--samples", str(tmp_path / "s")]) == 2
    assert "another-version (5 rows)" in capsys.readouterr().err

    frame["model_version"] = load_model(tiny_model_dir).version
    frame.to_parquet(tmp_path / "s" / "x.parquet")
    (tmp_path / "labels.csv").write_text("transaction_id,is_fraud\nt1,maybe\n")
    assert main(["--model", str(tiny_model_dir), "--samples", str(tmp_path / "s"),
                 "--labels", str(tmp_path / "labels.csv")]) == 2
    assert "row 1: is_fraud 'maybe' is not a boolean" in capsys.readouterr().err


def test_an_artifact_pickled_before_reference_labels_still_loads(tmp_path: Path) -> None:
    from export.metadata import Thresholds
    from training.artifact import TrainedModel

    old = TrainedModel(None, "v1", FEATURE_NAMES, Thresholds(0.5, 0.9, "test"), {},
                       np.zeros((1, 36), np.float32), np.zeros(1, np.float32),
                       np.zeros((1, 36), np.float32), "v1-old")
    del old.__dict__["reference_labels"]  # as pickled by the code before the field existed
    assert TrainedModel.load(old.save(tmp_path)).reference_labels is None
