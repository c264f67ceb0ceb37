"""The offline training artifact that ``training.train`` writes (``model.pkl``).

It is a pickle, for notebooks and the tests; loading one runs code from the file, so
nothing in ``export/`` or the flow loads it: ``just train`` converts the model to ONNX
in memory and hands that over (:mod:`export.handover`). What serves is the ONNX file.
Held-out card ids are stored as pseudonyms (:mod:`export.pseudonym`).
"""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.metadata import Thresholds

ARTIFACT_FILE = "model.pkl"


@dataclass
class TrainedModel:
    """A fitted soft-voting ensemble plus what export needs to publish it.

    ``ensemble`` is the served model: refitted on all labelled history unless training
    ran with ``--no-refit`` (then the selection model); ``metrics["refit"]`` says which.
    """

    ensemble: Any  # sklearn.ensemble.VotingClassifier (xgb + rf), fitted on float32
    feature_spec_version: str
    feature_names: tuple[str, ...]
    thresholds: Thresholds
    metrics: dict[str, Any]
    reference_features: np.ndarray  # float32 sample of the served model's training rows
    reference_scores: np.ndarray  # served model's scores on rows it did not train on
    holdout_features: np.ndarray  # float32 sample of holdout-test rows (parity, champion check)
    model_version: str
    params: dict[str, Any] = field(default_factory=dict)
    # eventual is_fraud of the reference_features rows; None in artifacts older than the field
    # (a plain default, so their pickles load with it as a class attribute)
    reference_labels: np.ndarray | None = None
    # The holdout_features rows' eventual is_fraud, event time (int64 ms) and card pseudonym
    # (export.pseudonym: which rows share a card, never the card id), and,
    # when the served model was refitted on them, the selection model's (out-of-sample)
    # ensemble scores; None in older artifacts (and holdout_scores without a refit).
    holdout_labels: np.ndarray | None = None
    holdout_event_time: np.ndarray | None = None
    holdout_card_id: np.ndarray | None = None
    holdout_scores: np.ndarray | None = None
    #: What the features depend on besides the spec (``training.features.feature_context()``:
    #: spec version, reference currency, rate table); JSON-ready, copied into the ONNX
    #: metadata by export. Empty in artifacts older than the field (see ``__setstate__``).
    feature_context: dict[str, Any] = field(default_factory=dict)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle, giving fields added since the artifact was written their defaults."""
        for f in dataclasses.fields(self):
            if f.name not in state and f.default_factory is not dataclasses.MISSING:
                state[f.name] = f.default_factory()
        self.__dict__.update(state)

    def save(self, out_dir: Path) -> Path:
        """Write ``model.pkl`` into ``out_dir``; return its path."""
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / ARTIFACT_FILE
        with path.open("wb") as fh:
            pickle.dump(self, fh, protocol=pickle.HIGHEST_PROTOCOL)
        return path

    @staticmethod
    def load(path: Path) -> TrainedModel:
        """Read a ``model.pkl`` file or the directory that holds one.

        Unpickling runs code from the file: only load an artifact you wrote yourself.
        """
        if path.is_dir():
            path = path / ARTIFACT_FILE
        with path.open("rb") as fh:
            obj = pickle.load(fh)  # noqa: S301 - our own offline artifact
        if not isinstance(obj, TrainedModel):
            raise TypeError(f"{path} holds a {type(obj).__name__}, not a TrainedModel")
        return obj
