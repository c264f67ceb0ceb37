"""The offline training artifact that ``training.train`` writes and ``export.onnx`` reads.

It is a pickle for the offline hand-over only; what serves is the ONNX file.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.metadata import Thresholds

ARTIFACT_FILE = "model.pkl"


@dataclass
class TrainedModel:
    """A fitted soft-voting ensemble plus what export needs to publish it."""

    ensemble: Any  # sklearn.ensemble.VotingClassifier (xgb + rf), fitted on float32
    feature_spec_version: str
    feature_names: tuple[str, ...]
    thresholds: Thresholds
    metrics: dict[str, Any]
    reference_features: np.ndarray  # float32 sample of training rows (reference histograms)
    reference_scores: np.ndarray  # ensemble scores on validation rows (score histogram)
    holdout_features: np.ndarray  # float32 rows never trained on (export parity check)
    model_version: str
    params: dict[str, Any] = field(default_factory=dict)
    # eventual is_fraud of the reference_features rows; None in artifacts older than the field
    # (a plain default, so their pickles load with it as a class attribute)
    reference_labels: np.ndarray | None = None

    def save(self, out_dir: Path) -> Path:
        """Write ``model.pkl`` into ``out_dir``; return its path."""
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / ARTIFACT_FILE
        with path.open("wb") as fh:
            pickle.dump(self, fh, protocol=pickle.HIGHEST_PROTOCOL)
        return path

    @staticmethod
    def load(path: Path) -> TrainedModel:
        """Read a ``model.pkl`` file or the directory that holds one."""
        if path.is_dir():
            path = path / ARTIFACT_FILE
        with path.open("rb") as fh:
            obj = pickle.load(fh)  # noqa: S301 - our own offline artifact
        if not isinstance(obj, TrainedModel):
            raise TypeError(f"{path} holds a {type(obj).__name__}, not a TrainedModel")
        return obj
