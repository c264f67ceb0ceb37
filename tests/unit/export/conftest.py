"""Real tiny models for the export tests: trained on simulated worlds, with held-out labels.

``holdout_*`` attributes are what the training helper is adding to ``TrainedModel``
(the test period's features, eventual labels, event times and card ids); set here from
the same split so the champion comparison runs on real rows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tiny_model import TINY, TINY_WORLD, tiny_history
from training.artifact import TrainedModel
from training.features import feature_spec, point_in_time_features
from training.history import History
from training.train import TrainConfig, time_split, train_on_features


@dataclass
class Tiny:
    trained: TrainedModel
    out: Path
    history: History
    X: np.ndarray


def train_with_holdout(out: Path, history: History, cfg: TrainConfig = TINY,
                       spec: tuple[str, tuple[str, ...]] | None = None,
                       X: np.ndarray | None = None) -> Tiny:
    X = point_in_time_features(history) if X is None else X
    spec = spec or feature_spec()
    trained = train_on_features(
        X, history.is_fraud, history.label_time, history.event_time, history.card_id,
        history.scenario, spec, out, cfg)
    te = time_split(history.event_time, cfg).test
    trained.holdout_features = X[te]
    trained.holdout_labels = history.is_fraud[te]  # type: ignore[attr-defined]
    trained.holdout_event_time = history.event_time[te]  # type: ignore[attr-defined]
    trained.holdout_card_id = history.card_id[te]  # type: ignore[attr-defined]
    trained.save(out)
    return Tiny(trained, out, history, X)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    """The tiny world's model, with held-out labels."""
    return train_with_holdout(tmp_path_factory.mktemp("tiny"), tiny_history())


@pytest.fixture(scope="session")
def other(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    """A second real model from another world (another version, other scores)."""
    history = tiny_history(dataclasses.replace(TINY_WORLD, seed=6))
    return train_with_holdout(tmp_path_factory.mktemp("other"), history)


@pytest.fixture(scope="session")
def trainer() -> object:
    """:func:`train_with_holdout`, for tests that train a variant."""
    return train_with_holdout
