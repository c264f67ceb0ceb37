"""Real tiny models for the export tests: trained on simulated worlds, with held-out labels.

Training stores a sample of the test period (``holdout_*``: features, eventual labels,
event times, card pseudonyms and the selection model's scores) in the artifact, so the
champion comparison runs on real rows. ``tiny`` also has the hand-over ``just train``
writes (``out/handover/``), which ``just export-onnx`` reads.
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
from training.train import TrainConfig, train_on_features


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
    assert trained.holdout_labels is not None and len(trained.holdout_labels) == len(
        trained.holdout_features)
    return Tiny(trained, out, history, X)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    """The tiny world's model, with held-out labels and its hand-over on disk."""
    from export.handover import Handover

    tiny = train_with_holdout(tmp_path_factory.mktemp("tiny"), tiny_history())
    Handover.from_trained(tiny.trained).save(tiny.out)
    return tiny


@pytest.fixture(scope="session")
def other(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    """A second real model from another world (another version, other scores)."""
    history = tiny_history(dataclasses.replace(TINY_WORLD, seed=6))
    return train_with_holdout(tmp_path_factory.mktemp("other"), history)


@pytest.fixture(scope="session")
def trainer() -> object:
    """:func:`train_with_holdout`, for tests that train a variant."""
    return train_with_holdout
