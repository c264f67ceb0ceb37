"""A tiny real model, trained on simulated history and exported by our own code, for tests."""

from __future__ import annotations

from pathlib import Path

from export.onnx import export_trained, reference_table
from export.registry import ModelRegistry
from training.artifact import TrainedModel
from training.features import feature_spec, point_in_time_features
from training.history import History, from_frame
from training.simulate import SimConfig, simulate
from training.train import TrainConfig, train_on_features

TINY = TrainConfig(
    xgb_estimators=15, xgb_depth=3, rf_estimators=8, rf_depth=5, label_delay_days=3,
    strategies=("weight", "undersample"), xgb_grid=({"learning_rate": 0.3},),
    xgb_weights=(0.6,), review_per_day=20, n_jobs=1, holdout_rows=2_000,
)
TINY_WORLD = SimConfig(n_transactions=12_000, n_cards=300, days=36, seed=8, fraud_rate=0.03)


def tiny_history(world: SimConfig = TINY_WORLD) -> History:
    """A small simulated labelled history."""
    return from_frame(simulate(world))


def train_tiny(out: Path, history: History | None = None) -> TrainedModel:
    """Replay ``history`` (default: the tiny world) through state and train the tiny ensemble."""
    history = history or tiny_history()
    X = point_in_time_features(history)
    return train_on_features(
        X, history.is_fraud, history.label_time, history.event_time, history.card_id,
        history.scenario, feature_spec(), out, TINY,
    )


def publish_tiny(models_dir: Path, trained: TrainedModel) -> Path:
    """Export ``trained`` to ONNX (parity-checked), publish it with its reference rows."""
    data, parity = export_trained(trained)
    registry = ModelRegistry(models_dir)
    return registry.publish(trained.model_version, data, parity=parity, make_current=True,
                            reference=reference_table(trained, data))
