"""End to end: tiny simulated history -> replay -> train -> ONNX export -> registry -> load."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from export.errors import FeatureSpecMismatch, ModelLoadError, ParityError, RegistryError
from export.metadata import PREFIX, ModelMetadata
from export.model import load_model
from export.onnx import PARITY_TOLERANCE, check_parity, export_trained
from export.registry import ModelRegistry
from export.release import main
from state.spec import FEATURE_NAMES, FEATURE_SPEC_VERSION
from tiny_model import train_tiny
from training.artifact import TrainedModel


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainedModel, Path]:
    from export.handover import Handover

    out = tmp_path_factory.mktemp("run")
    model = train_tiny(out)
    Handover.from_trained(model).save(out)  # what `just train` writes for `just export-onnx`
    return model, out


def test_training_outputs_report_and_artifact(trained: tuple[TrainedModel, Path]) -> None:
    model, out = trained
    for name in ("model.pkl", "report.md", "metrics.json", "pr.png", "roc.png", "scores.png",
                 "importance.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["test"]
    assert set(test) == {"ensemble", "xgb", "rf"}
    assert 0.5 < test["ensemble"]["auc_roc"] <= 1.0
    assert "card_testing" in test["ensemble"]["scenario_recall"]
    assert {t["strategy"] for t in metrics["trials"]} == {"weight", "undersample"}
    assert 0 < model.thresholds.review <= model.thresholds.decline < 1
    assert TrainedModel.load(out).model_version == model.model_version


def test_export_parity_metadata_registry_and_loader(
    trained: tuple[TrainedModel, Path], tmp_path: Path
) -> None:
    model, out = trained
    data, parity = export_trained(model, "v-test")
    assert parity.max_abs_diff <= PARITY_TOLERANCE and parity.decision_mismatches == 0
    proto = onnx.load_from_string(data)
    assert [i.name for i in proto.graph.input] == ["features"]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(n.op_type != "ZipMap" for n in proto.graph.node)
    opsets = {o.domain: o.version for o in proto.opset_import}
    assert opsets["ai.onnx.ml"] == 3 and opsets[""] <= 17
    meta = ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props})
    assert meta.feature_spec_version == FEATURE_SPEC_VERSION
    assert meta.feature_names == FEATURE_NAMES
    assert meta.thresholds == model.thresholds
    assert set(meta.feature_histograms) == set(FEATURE_NAMES)
    for hist in [*meta.feature_histograms.values(), meta.score_histogram]:
        assert len(hist["proportions"]) == len(hist["edges"]) + 1
        assert abs(sum(hist["proportions"]) - 1) < 1e-9
    assert meta.training_metrics["test"]["ensemble"]["auc_roc"] > 0.5
    assert set(meta.members) == {"xgb", "rf"}

    registry = ModelRegistry(tmp_path / "models")
    target = registry.publish("v-test", data, report_dir=out, parity=parity)
    assert registry.current() == "v-test" and registry.versions() == ["v-test"]
    for name in ("model.onnx", "MODEL_CARD.md", "report.md", "metrics.json", "pr.png"):
        assert (target / name).is_file()
    assert not os.access(target / "model.onnx", os.W_OK) or os.geteuid() == 0
    with pytest.raises(RegistryError, match="immutable"):
        registry.publish("v-test", data)
    with pytest.raises(RegistryError, match="not 'v-other'"):
        registry.publish("v-other", data)

    scorer = load_model(tmp_path / "models" / "current")
    assert scorer.version == "v-test" and scorer.feature_names == FEATURE_NAMES
    assert scorer.feature_spec_version == FEATURE_SPEC_VERSION
    rows = model.holdout_features[:500]
    native = model.ensemble.predict_proba(rows)[:, 1]
    scores = scorer.predict(rows)
    assert scores.shape == (500,) and np.abs(scores - native).max() <= PARITY_TOLERANCE
    assert (scorer.decide(scores) == model.thresholds.decide(native)).all()
    assert scorer.predict(np.zeros((0, len(FEATURE_NAMES)), np.float32)).shape == (0,)


def test_parity_failure_is_loud(trained: tuple[TrainedModel, Path]) -> None:
    model, _ = trained
    data, _ = export_trained(model)
    rows = model.holdout_features[:200]
    native = model.ensemble.predict_proba(rows)[:, 1] + 1e-3
    with pytest.raises(ParityError, match="differ by"):
        check_parity(data, native, rows, model.thresholds)


def _tweak(data: bytes, **props: Any) -> bytes:
    proto = onnx.load_from_string(data)
    for p in proto.metadata_props:
        if p.key[len(PREFIX):] in props:
            p.value = props[p.key[len(PREFIX):]]
    return proto.SerializeToString()


def test_loader_errors_say_how_to_fix(trained: tuple[TrainedModel, Path], tmp_path: Path) -> None:
    model, _ = trained
    with pytest.raises(ModelLoadError, match="just train.*just export-onnx"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="just export-onnx"):
        load_model(tmp_path / "bad.onnx")
    data, _ = export_trained(model)
    (tmp_path / "old.onnx").write_bytes(_tweak(data, feature_spec_version="v0"))
    with pytest.raises(FeatureSpecMismatch, match="'v0'.*just train"):
        load_model(tmp_path / "old.onnx")
    assert load_model(tmp_path / "old.onnx", expected_feature_spec=None).version


def test_cli_publishes_once(trained: tuple[TrainedModel, Path], tmp_path: Path) -> None:
    _, out = trained
    args = ["--model", str(out), "--models-dir", str(tmp_path / "m"), "--version", "v-cli"]
    assert main(args) == 0
    assert (tmp_path / "m" / "current" / "model.onnx").is_file()
    assert main(args) == 1  # versions are immutable
