from pathlib import Path

import pytest

from export.errors import ModelLoadError
from export.model import load_model
from flows.score import build_flow, check_partitions, serving_thresholds
from flows.settings import ScoringSettings
from topics.errors import ConfigError


def test_threshold_overrides_include_zero(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir)
    settings = ScoringSettings.from_env({"FRAUD_REVIEW_THRESHOLD": "0.0"})
    thresholds = serving_thresholds(settings, model)
    assert thresholds.review == 0.0 and thresholds.decline == model.thresholds.decline
    assert "overridden" in thresholds.policy
    assert serving_thresholds(ScoringSettings.from_env({}), model) == model.thresholds


def test_review_override_above_the_models_decline_is_refused(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir)
    with pytest.raises(ConfigError, match="FRAUD_REVIEW_THRESHOLD"):
        serving_thresholds(ScoringSettings.from_env({"FRAUD_REVIEW_THRESHOLD": "1.0"}), model)


def test_missing_model_says_how_to_train_one_before_touching_kafka(tmp_path: Path) -> None:
    settings = ScoringSettings.from_env({
        "FRAUD_MODEL_PATH": str(tmp_path / "nope"), "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    with pytest.raises(ModelLoadError, match="just train DATA=.* then `just export-onnx`"):
        build_flow(settings)


def test_model_trained_on_another_partition_count_is_refused(tiny_model_dir: Path) -> None:
    settings = ScoringSettings.from_env({"FRAUD_MODEL_PATH": str(tiny_model_dir)})
    model = load_model(tiny_model_dir)
    assert model.metadata.feature_partitions == 8
    check_partitions(model, settings, 8)
    with pytest.raises(ConfigError, match="over 8 partitions.*has 4"):
        check_partitions(model, settings, 4)


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("FRAUD_BATCH_MAX", "0", "FRAUD_BATCH_MAX='0': expected an integer from 1"),
    ("FRAUD_DECLINE_THRESHOLD", "high", "expected a probability"),
    ("FRAUD_LOG_LEVEL", "LOUD", "FRAUD_LOG_LEVEL"),
    ("FRAUD_BATCHMAX", "5", "unknown setting FRAUD_BATCHMAX"),
])
def test_wrong_settings_name_the_variable(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        ScoringSettings.from_env({name: value})


def test_a_state_store_behind_the_recovery_snapshot_stops_the_step(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from flows.score import _ScoreLogic
    from flows.scorer import PartitionScorer
    from flows.serving import ModelSource
    from state.errors import StateError
    from state.store import PartitionStore

    def opener(state_dir: Path):  # type: ignore[no-untyped-def]
        def open_scorer(partition: int) -> PartitionScorer:
            source = ModelSource(tiny_model_dir, thresholds=lambda m: m.thresholds, interval=0)
            return PartitionScorer(PartitionStore.open(state_dir, partition), source)
        return open_scorer

    labels_only: list = []
    logic = _ScoreLogic(opener(tmp_path / "fresh"), resume_offset=-1, idle_seconds=60)
    assert logic.on_batch([_label_event()]) == (labels_only, False)
    assert logic.snapshot() == -1
    with pytest.raises(StateError, match="delete both the state directory"):
        lost = _ScoreLogic(opener(tmp_path / "lost"), resume_offset=41, idle_seconds=60)
        lost.on_batch([_label_event()])


def _label_event():  # type: ignore[no-untyped-def]
    from flows.decode import Sourced
    from flows.score import PartitionEvent
    from topics.contracts import Label

    label = Label(transaction_id="t", card_id="c", merchant_id="m", is_fraud=True,
                  label_time=1_700_000_000_000)
    return PartitionEvent(0, Sourced(label, 0, 0, 1_700_000_000_000))
