"""Models are probed before they serve: graph shapes vs metadata, and a probe prediction."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from export.errors import ModelProbeError
from export.metadata import PREFIX, ModelMetadata
from export.model import load_model
from export.onnx import export_trained
from export.parity import PARITY_TOLERANCE
from export.registry import ModelRegistry
from state.spec import FEATURE_NAMES, FEATURE_SPEC_VERSION


def props(data: bytes) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load_from_string(data).metadata_props}


def patched(data: bytes, drop: tuple[str, ...] = (), **values: str) -> bytes:
    proto = onnx.load_from_string(data)
    keep = [(p.key, p.value) for p in proto.metadata_props
            if p.key.removeprefix(PREFIX) not in drop]
    del proto.metadata_props[:]
    for key, value in keep:
        entry = proto.metadata_props.add()
        entry.key = key
        entry.value = values.get(key.removeprefix(PREFIX), value)
    return proto.SerializeToString()


@pytest.fixture(scope="module")
def narrow(tiny: Any, trainer: Any, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real export of a model trained on all features but the last (F-1 graph columns),
    whose metadata is then patched to name all F features: the issue-14 mismatch."""
    names = tuple(FEATURE_NAMES[:-1])
    small = trainer(tmp_path_factory.mktemp("narrow"), tiny.history,
                               spec=(FEATURE_SPEC_VERSION, names), X=tiny.X[:, :-1])
    data, _ = export_trained(small.trained)
    graph = onnx.load_from_string(data).graph.input[0].type.tensor_type.shape.dim
    assert graph[1].dim_value == len(FEATURE_NAMES) - 1
    return patched(data, feature_names=json.dumps(list(FEATURE_NAMES)),
                   n_features=str(len(FEATURE_NAMES)))


def test_export_stores_probe_rows_spread_over_the_score_range(tiny: Any) -> None:
    data, _ = export_trained(tiny.trained, "v-probe")
    meta = ModelMetadata.from_props(props(data))
    assert len(meta.probe_rows) == 8 and len(meta.probe_scores) == 8
    assert all(len(r) == len(FEATURE_NAMES) for r in meta.probe_rows)
    rows = np.asarray(meta.probe_rows, dtype=np.float32)
    native = tiny.trained.ensemble.predict_proba(rows)[:, 1]
    assert np.abs(native - np.asarray(meta.probe_scores)).max() <= PARITY_TOLERANCE
    # lowest and highest held-out scores are among them
    all_native = tiny.trained.ensemble.predict_proba(tiny.trained.holdout_features)[:, 1]
    assert min(meta.probe_scores) == pytest.approx(all_native.min(), abs=1e-5)
    assert max(meta.probe_scores) == pytest.approx(all_native.max(), abs=1e-5)
    assert load_model(_write(data, "v-probe")).version == "v-probe"


_TMP: list[Path] = []


def _write(data: bytes, name: str) -> Path:
    import tempfile

    d = Path(tempfile.mkdtemp())
    _TMP.append(d)
    (d / "model.onnx").write_bytes(data)
    return d / "model.onnx"


def test_graph_of_35_columns_with_36_named_features_is_refused(narrow: bytes) -> None:
    with pytest.raises(ModelProbeError) as err:
        load_model(_write(narrow, "narrow"))
    msg = str(err.value)
    n = len(FEATURE_NAMES)
    assert f"graph takes {n - 1} feature columns but its metadata names {n} features" in msg
    assert "re-export" in msg and "\n" not in msg


def test_hot_reload_refuses_the_mismatched_model_and_keeps_serving(
    tiny: Any, narrow: bytes, tmp_path: Path
) -> None:
    from flows.serving import ModelSource

    registry = ModelRegistry(tmp_path / "models")
    good, _ = export_trained(tiny.trained, "v-good")
    registry.publish("v-good", good)
    registry.publish("v-narrow", patched(narrow, model_version='v-narrow'), make_current=False)
    now = [0.0]
    source = ModelSource(registry.root / "current", thresholds=lambda m: m.thresholds,
                         interval=1.0, clock=lambda: now[0])
    registry.set_current("v-narrow")
    now[0] = 5.0
    assert source.poll().version == "v-good"
    rows = tiny.trained.holdout_features[:50]
    assert source.poll().model.predict(rows).shape == (50,)


def test_probe_scores_that_do_not_match_are_refused(tiny: Any) -> None:
    data, _ = export_trained(tiny.trained, "v-drift")
    meta = ModelMetadata.from_props(props(data))
    wrong = [s + 0.01 for s in meta.probe_scores]
    with pytest.raises(ModelProbeError, match=r"probe: row \d+ scored .* the export recorded"):
        load_model(_write(patched(data, probe_scores=json.dumps(wrong)), "wrong"))
    short = meta.probe_rows[0][:-1]
    with pytest.raises(ModelProbeError, match="metadata probe rows"):
        load_model(_write(patched(data, probe_rows=json.dumps([short] * 8)), "short"))


def test_old_model_without_probe_rows_is_probed_with_reference_medians(tiny: Any) -> None:
    data, _ = export_trained(tiny.trained, "v-old")
    old = patched(data, drop=("probe_rows", "probe_scores", "feature_context"))
    meta = ModelMetadata.from_props(props(old))
    assert meta.probe_rows == () and meta.feature_context == {}
    median = meta.median_row()
    assert median.shape == (1, len(FEATURE_NAMES)) and median.dtype == np.float32
    assert load_model(_write(old, "old")).version == "v-old"
    # the median probe still catches a graph that does not fit the metadata
    n_names = json.dumps(list(FEATURE_NAMES[:-1]))
    with pytest.raises(ModelProbeError):
        load_model(_write(patched(old, feature_names=n_names), "old-narrow"),
                   expected_feature_spec=None)


def test_feature_context_is_copied_and_partitions_are_legacy(tiny: Any) -> None:
    trained = replace(tiny.trained)
    trained.feature_context = {"reference_currency": "EUR",  # type: ignore[attr-defined]
                               "rates_version": "2025-01"}
    meta = ModelMetadata.from_props(props(export_trained(trained, "v-ctx")[0]))
    assert meta.feature_context == {"reference_currency": "EUR", "rates_version": "2025-01"}
    assert meta.feature_partitions == 0
    assert PREFIX + "feature_partitions" not in meta.to_props()
    old_props = {**meta.to_props(), PREFIX + "feature_partitions": "8"}
    assert ModelMetadata.from_props(old_props).feature_partitions == 8  # still read


def test_registry_and_onnx_no_longer_import_each_other() -> None:
    code = ("import sys, export.registry; assert 'export.onnx' not in sys.modules, 'registry'; "
            "import export.onnx")
    subprocess.run([sys.executable, "-c", code], check=True)
