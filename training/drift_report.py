"""Evidently drift report: a model's training reference against the stream's scored samples.

``python -m training.drift_report`` (``just drift-report``) compares
``models/<version>/reference.parquet`` (training rows, scored by the exported
model; written by ``just export-onnx``) with the feature vectors the flow
sampled while scoring (Parquet under ``FRAUD_SAMPLE_DIR``, see
:mod:`drift.samples`), so no feature is recomputed. Only samples scored by the
report's model version are used, deduplicated by transaction id, optionally the
last ``--window-minutes`` of event time. The HTML report holds:

- data drift of every feature of the spec, the score and the decision: a per-column test
  (Evidently picks it from the data: Wasserstein distance or K-S for numeric
  columns, Jensen-Shannon or chi-squared for categories), the share of drifted
  columns, and each column's reference and current distributions;
- with ``--labels`` (a history file with ``transaction_id`` and ``is_fraud``):
  classification quality on the sampled rows, a row counting as flagged at the
  model's review threshold. A sampled transaction without a fraud label counts
  as legitimate so far (the labels topic's convention), so a recent window
  under-counts fraud until its labels arrive. The reference's quality is
  in-sample (training rows), hence optimistic.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from export.registry import REFERENCE_FILE
from topics.errors import FraudStreamError

SAMPLE_COLUMNS = ("transaction_id", "event_time", "model_version", "score", "decision")
QUALITY = ("Precision", "Recall", "F1Score", "RocAuc")  # metric names in the text summary


class DriftReportError(FraudStreamError):
    """The report cannot be built; the message says how to fix it."""


@dataclass(frozen=True)
class DriftSummary:
    """What the report found, for the text summary and for tests."""

    reference_rows: int
    current_rows: int
    columns: tuple[str, ...]
    drifted: tuple[str, ...]
    quality: dict[str, float] | None = None  # current window, at the review threshold
    fraud_rows: int = 0

    @property
    def share(self) -> float:
        """Share of drifted columns."""
        return len(self.drifted) / len(self.columns) if self.columns else 0.0


def load_reference(model_dir: Path) -> pd.DataFrame:
    """The model version's ``reference.parquet``."""
    path = model_dir / REFERENCE_FILE
    if not path.is_file():
        raise DriftReportError(
            f"{model_dir} has no {REFERENCE_FILE} (exported before drift reports existed); "
            "publish it again under a new version: `just export-onnx --version <new>` (after "
            "`just train` if runs/train is gone), or `just train` then `just export-onnx`"
        )
    return pq.read_table(path).to_pandas()


def load_samples(
    directory: Path, columns: Sequence[str], model_version: str,
    window_minutes: float | None = None,
) -> pd.DataFrame:
    """Sampled rows of ``model_version`` under ``directory``: deduplicated, optionally windowed."""
    files = sorted(p for p in directory.rglob("*.parquet") if p.is_file())
    if not files:
        raise DriftReportError(
            f"no sample files (*.parquet) under {directory}; run the flow or the demo first "
            "(samples are written by the flow to FRAUD_SAMPLE_DIR at FRAUD_SAMPLE_RATE)"
        )
    wanted = [*SAMPLE_COLUMNS, *columns]
    tables = []
    for path in files:
        missing = _missing(path, wanted)
        if missing:
            raise DriftReportError(
                f"{path} is not a sample file of this model's feature spec ({missing}); move it "
                f"out of {directory} or pass --samples"
            )
        tables.append(pq.read_table(path, columns=wanted))
    frame = pa.concat_tables(tables).to_pandas()
    versions = frame["model_version"].value_counts()
    frame = frame[frame["model_version"] == model_version]
    if frame.empty:
        found = ", ".join(f"{v} ({n} rows)" for v, n in versions.items())
        raise DriftReportError(
            f"no samples scored by {model_version} under {directory} (found: {found}); pass "
            "--model models/<version> for one of those"
        )
    frame = frame.drop_duplicates("transaction_id").sort_values("event_time", kind="stable")
    if window_minutes is not None:
        start = int(frame["event_time"].max()) - int(window_minutes * 60_000)
        frame = frame[frame["event_time"] >= start]
    return frame.reset_index(drop=True)


def _missing(path: Path, columns: Sequence[str]) -> str:
    """What keeps ``path`` from being read as Parquet with ``columns`` ("" if nothing)."""
    try:
        names = set(pq.read_schema(path).names)
    except (OSError, pa.ArrowInvalid) as exc:
        return f"not readable as Parquet: {exc}"
    lacking = [c for c in columns if c not in names]
    if not lacking:
        return ""
    return f"no column {', '.join(lacking[:3])}" + (", ..." if len(lacking) > 3 else "")


def load_fraud_ids(path: Path) -> set[str]:
    """Transaction ids labelled fraud in a history/labels file (Parquet or CSV)."""
    from training.history import _bool

    cols = ["transaction_id", "is_fraud"]
    parquet = path.suffix.lower() == ".parquet"
    problem = _missing(path, cols) if parquet else ""
    frame = pd.DataFrame()
    if not problem:
        try:
            frame = pq.read_table(path, columns=cols).to_pandas() if parquet \
                else pd.read_csv(path, usecols=cols, dtype={"transaction_id": str})
        except (OSError, ValueError) as exc:
            problem = str(exc)
    if problem:
        raise DriftReportError(
            f"cannot read labels from {path} ({problem}); it needs columns transaction_id and "
            "is_fraud (a Parquet or CSV history file, see training/history.py)"
        )
    flags = frame["is_fraud"].map(_bool)
    if flags.isna().any():
        row = int(np.flatnonzero(flags.isna().to_numpy())[0])
        raise DriftReportError(
            f"{path}: row {row + 1}: is_fraud {frame['is_fraud'].iloc[row]!r} is not a boolean"
        )
    return set(frame.loc[flags.astype(bool), "transaction_id"].astype(str))


def build_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    features: Sequence[str],
    review_threshold: float,
    fraud_ids: set[str] | None = None,
) -> tuple[Any, DriftSummary]:
    """Run the Evidently report; return the snapshot (``save_html``) and a summary.

    Classification quality is added when ``fraud_ids`` is given, the reference has
    labels and the current rows hold both classes.
    """
    with warnings.catch_warnings():  # evidently's own deprecation noise, not the user's concern
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return _build(reference, current, features, review_threshold, fraud_ids)


def _build(
    reference: pd.DataFrame, current: pd.DataFrame, features: Sequence[str],
    review_threshold: float, fraud_ids: set[str] | None,
) -> tuple[Any, DriftSummary]:
    import evidently as ev
    from evidently.presets import ClassificationPreset, DataDriftPreset

    numeric = [*features, "score"]
    columns = [*numeric, "decision"]
    ref, cur = reference[columns].copy(), current[columns].copy()
    items: list[Any] = [DataDriftPreset(columns=columns)]
    classification = []
    target = current["transaction_id"].isin(fraud_ids or ()).astype(int)
    fraud_rows = int(target.sum())
    if fraud_ids is not None and "is_fraud" in reference and 0 < fraud_rows < len(cur):
        cur["is_fraud"], ref["is_fraud"] = target, reference["is_fraud"].astype(int)
        classification = [ev.BinaryClassification(
            target="is_fraud", prediction_probas="score", pos_label=1)]
        items.append(ClassificationPreset(probas_threshold=review_threshold))
    definition = ev.DataDefinition(numerical_columns=numeric, categorical_columns=["decision"],
                                   classification=classification or None)
    snapshot = ev.Report(items, include_tests=True).run(
        ev.Dataset.from_pandas(cur, data_definition=definition),
        ev.Dataset.from_pandas(ref, data_definition=definition),
    )
    result = snapshot.dict()
    drifted = tuple(
        t["metric_config"]["params"]["column"] for t in result["tests"]
        if t["id"] == "drift" and str(getattr(t["status"], "value", t["status"])) != "SUCCESS"
    )
    quality = None
    if classification:
        quality = {m["metric_name"].split("(")[0]: float(m["value"]) for m in result["metrics"]
                   if m["metric_name"].split("(")[0] in QUALITY}
    summary = DriftSummary(len(ref), len(cur), tuple(columns), drifted, quality, fraud_rows)
    return snapshot, summary


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ms / 1000))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(prog="python -m training.drift_report",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--model", type=Path, default=Path("models/current"),
                   help="model version directory or its model.onnx (default: models/current)")
    p.add_argument("--samples", type=Path, default=Path(".dev/samples"),
                   help="directory of the flow's sample files, read recursively "
                        "(default: .dev/samples, FRAUD_SAMPLE_DIR's default)")
    p.add_argument("--labels", type=Path, default=None,
                   help="history/labels file (Parquet or CSV) with transaction_id and is_fraud: "
                        "adds classification quality")
    p.add_argument("--window-minutes", type=float, default=None,
                   help="only the last N minutes of event time (default: every sample)")
    p.add_argument("--out", type=Path, default=None,
                   help="HTML output (default: .dev/reports/drift-<model version>.html)")
    args = p.parse_args(argv)

    def say(msg: str) -> None:
        print(f"[drift-report] {msg}", flush=True)

    from export.errors import ModelLoadError
    from export.model import load_model, resolve_model_file

    try:
        model = load_model(args.model, expected_feature_spec=None)
        model_dir = resolve_model_file(args.model).resolve().parent
        reference = load_reference(model_dir)
        features = model.feature_names
        say(f"model {model.version}: reference {len(reference)} training rows "
            f"({model_dir / REFERENCE_FILE})")
        current = load_samples(args.samples, features, model.version, args.window_minutes)
        say(f"samples: {len(current)} rows scored by {model.version} under {args.samples}, "
            f"event time {_utc(int(current['event_time'].min()))} to "
            f"{_utc(int(current['event_time'].max()))} UTC")
        fraud_ids = load_fraud_ids(args.labels) if args.labels is not None else None
        say(f"building the Evidently report ({len(features) + 2} columns"
            + (", with labels" if fraud_ids is not None else "") + ")...")
        snapshot, summary = build_report(reference, current, features,
                                         model.thresholds.review, fraud_ids)
    except (DriftReportError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path(".dev/reports") / f"drift-{model.version}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(out))
    say(f"drifted columns: {len(summary.drifted)} of {len(summary.columns)} "
        f"({summary.share:.0%})" + (f": {', '.join(summary.drifted)}" if summary.drifted else ""))
    if summary.quality is not None:
        q = ", ".join(f"{k} {v:.3f}" for k, v in summary.quality.items())
        say(f"classification at the review threshold {model.thresholds.review:.4f}: {q} "
            f"({summary.current_rows} rows, {summary.fraud_rows} labelled fraud)")
    elif fraud_ids is not None:
        say("classification quality skipped: the sampled rows need both fraud and legitimate "
            "ones, and the reference its labels (re-train and re-export if it has none)")
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
