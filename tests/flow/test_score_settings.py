from pathlib import Path

import pytest

from export.errors import ModelLoadError
from export.model import load_model
from flows.score import build_flow
from flows.settings import ScoringSettings
from scoring.serving import serving_thresholds
from topics.errors import ConfigError


def test_threshold_overrides_include_zero(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir)
    settings = ScoringSettings.from_env({"FRAUD_REVIEW_THRESHOLD": "0.0"})
    thresholds = serving_thresholds(model, settings.review_threshold, settings.decline_threshold)
    assert thresholds.review == 0.0 and thresholds.decline == model.thresholds.decline
    assert "overridden" in thresholds.policy
    assert serving_thresholds(model) == model.thresholds


def test_review_override_above_the_models_decline_is_refused(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir)
    with pytest.raises(ConfigError, match="FRAUD_REVIEW_THRESHOLD"):
        serving_thresholds(model, review=1.0)


def test_missing_model_says_how_to_train_one_before_touching_kafka(tmp_path: Path) -> None:
    settings = ScoringSettings.from_env({
        "FRAUD_MODEL_PATH": str(tmp_path / "nope"), "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    with pytest.raises(ModelLoadError, match="just train DATA=.* then `just export-onnx`"):
        build_flow(settings)


def test_a_model_without_a_rate_table_is_refused_before_touching_kafka(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import onnx

    proto = onnx.load(str(tiny_model_dir / "model.onnx"))
    for prop in proto.metadata_props:
        if prop.key == "fraudstream.feature_context":
            prop.value = "{}"
    (tmp_path / "m").mkdir()
    onnx.save(proto, str(tmp_path / "m" / "model.onnx"))
    settings = ScoringSettings.from_env({
        "FRAUD_MODEL_PATH": str(tmp_path / "m"), "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    with pytest.raises(ConfigError, match="records no rate table"):
        build_flow(settings)


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("FRAUD_BATCH_MAX", "0", "FRAUD_BATCH_MAX='0': expected an integer from 1"),
    ("FRAUD_DECLINE_THRESHOLD", "high", "expected a probability"),
    ("FRAUD_LOG_LEVEL", "LOUD", "FRAUD_LOG_LEVEL"),
    ("FRAUD_BATCHMAX", "5", "unknown setting FRAUD_BATCHMAX"),
])
def test_wrong_settings_name_the_variable(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        ScoringSettings.from_env({name: value})


def test_a_state_store_behind_the_recovery_snapshot_stops_the_step(tmp_path: Path) -> None:
    import numpy as np

    from flows.card_stage import CardLogic, CardSnapshot
    from flows.items import CardWork
    from stages import Src, decoded
    from state.card_store import CardStore
    from state.db import StoreIdentity
    from state.errors import StaleStateError
    from topics.contracts import Transaction

    def logic(root: Path, resumed: CardSnapshot | None) -> CardLogic:
        return CardLogic(
            lambda shard, _: CardStore.open(root, StoreIdentity("cards", shard, 1, "t")),
            lambda txns: np.array([t.amount for t in txns]), "t", 1, 1, resumed)

    txn = Transaction(transaction_id="t", card_id="c", merchant_id="m", amount=1.0,
                      currency="EUR", event_time=1_700_000_000_000)
    item = CardWork(0, 0, txn.event_time, False,
                    decoded([Src(txn, 0, 0, txn.event_time, txn.event_time)]))
    fresh = logic(tmp_path / "fresh", None)
    out, _ = fresh.on_batch([item])
    assert len(out) == 1 and fresh.snapshot().seq == 1
    with pytest.raises(StaleStateError, match="delete both the state directory"):
        logic(tmp_path / "lost", CardSnapshot(41)).on_batch([item])
