"""Export a trained ensemble to one ONNX graph, check parity, and publish it to the registry.

:func:`export_trained` runs on the fitted ``TrainedModel`` in memory, in the process
that trained it (``just train`` writes the result as the hand-over,
:mod:`export.handover`; ``just retrain`` passes it to :mod:`export.release`). It
converts the whole soft-voting ensemble (XGBoost + RandomForest) into a single graph
with a float32 input ``features [N, F]`` and a probability output
``probabilities [N, 2]`` (ZipMap off, opsets pinned), writes the model metadata into
``metadata_props`` and checks that ONNX and native scores agree within
:data:`PARITY_TOLERANCE` and that decisions agree at the thresholds.
:func:`reference_table` gives the scored training reference rows that ``just
drift-report`` compares the stream with; :mod:`export.release` publishes
``models/<version>/`` with them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import onnx
import pyarrow as pa

from export.errors import ExportError, ParityError
from export.metadata import INPUT_NAME, PROBA_OUTPUT, ModelMetadata, Thresholds, histogram
from export.parity import PARITY_TOLERANCE, ParityReport

__all__ = ["PARITY_TOLERANCE", "ParityReport", "check_parity", "export_trained"]

#: Pinned opsets: default domain and ai.onnx.ml (TreeEnsemble* operators).
TARGET_OPSET: dict[str, int] = {"": 17, "ai.onnx.ml": 3}

_registered = False


def register_xgboost() -> None:
    """Teach skl2onnx to convert ``XGBClassifier`` (onnxmltools converter); idempotent."""
    global _registered
    if _registered:
        return
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes
    from xgboost import XGBClassifier

    update_registered_converter(
        XGBClassifier,
        "XGBoostXGBClassifier",
        calculate_linear_classifier_output_shapes,
        convert_xgboost,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )
    _registered = True


def to_onnx(
    ensemble: Any, n_features: int, metadata: ModelMetadata | None = None
) -> onnx.ModelProto:
    """Convert a fitted classifier (soft ``VotingClassifier`` of XGB + RF) to one ONNX graph."""
    register_xgboost()
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    try:
        model = convert_sklearn(
            ensemble,
            initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
            target_opset=TARGET_OPSET,
            options={"zipmap": False},
        )
    except Exception as exc:  # skl2onnx raises many unrelated types
        raise ExportError(
            f"skl2onnx could not convert the {type(ensemble).__name__}: {exc}. A VotingClassifier "
            "needs voting='soft', numpy weights and flatten_transform=False"
        ) from exc
    outputs = [o.name for o in model.graph.output]
    if PROBA_OUTPUT not in outputs:
        raise ExportError(f"ONNX graph has outputs {outputs}, expected {PROBA_OUTPUT!r}")
    model.producer_name = "fraudstream.export"
    if metadata is not None:
        set_metadata(model, metadata)
    return model


def set_metadata(model: onnx.ModelProto, metadata: ModelMetadata) -> None:
    """Replace the ``fraudstream.*`` entries of ``metadata_props``."""
    props = metadata.to_props()
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in [*keep, *props.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def opsets_of(model: onnx.ModelProto) -> dict[str, int]:
    """Opset per domain actually used by the graph (``""`` is the default domain)."""
    return {imp.domain: int(imp.version) for imp in model.opset_import}


def check_parity(
    model_bytes: bytes,
    native_scores: np.ndarray,
    features: np.ndarray,
    thresholds: Thresholds,
    tolerance: float = PARITY_TOLERANCE,
) -> ParityReport:
    """Score ``features`` with the ONNX model; raise :class:`ParityError` on any disagreement."""
    from export.model import ScoringModel

    scorer = ScoringModel.from_bytes(model_bytes, source="<export>", expected_feature_spec=None)
    onnx_scores = scorer.predict(features)
    diff = np.abs(onnx_scores.astype(np.float64) - native_scores.astype(np.float64))
    max_diff = float(diff.max()) if diff.size else 0.0
    mismatches = int((thresholds.decide(onnx_scores) != thresholds.decide(native_scores)).sum())
    report = ParityReport(int(features.shape[0]), max_diff, mismatches)
    if not max_diff <= tolerance:
        worst = int(diff.argmax())
        raise ParityError(
            f"ONNX and native scores differ by {max_diff:.3g} (> {tolerance:g}) at row {worst} of "
            f"{report.rows}: native {native_scores[worst]:.8f}, onnx {onnx_scores[worst]:.8f}. "
            "Train on float32 features (trees compare float32) and check the converter versions."
        )
    if mismatches:
        raise ParityError(
            f"{mismatches} of {report.rows} decisions differ between ONNX and native scores at "
            f"thresholds review={thresholds.review}, decline={thresholds.decline}; pick "
            "thresholds between distinct scores (training.train does) and export again"
        )
    return report


#: Probe rows stored in the metadata (held-out rows across the score range).
PROBE_ROWS = 8


def build_metadata(
    trained: Any, model_version: str, opsets: dict[str, int], bins: int = 10
) -> ModelMetadata:
    """Metadata for a :class:`training.artifact.TrainedModel`: histograms, metrics, thresholds.

    ``feature_context`` is read with a default of ``{}``, so artifacts pickled before the
    field existed still export. Probe rows are added by :func:`export_trained`.
    """
    ref = np.asarray(trained.reference_features, dtype=np.float32)
    names = tuple(trained.feature_names)
    weights = np.asarray(trained.ensemble.weights, dtype=float)
    members = {
        name: float(w) for (name, _), w in zip(trained.ensemble.estimators, weights, strict=True)
    }
    return ModelMetadata(
        model_version=model_version,
        feature_spec_version=str(trained.feature_spec_version),
        feature_names=names,
        thresholds=trained.thresholds,
        training_metrics=trained.metrics,
        feature_histograms={n: histogram(ref[:, i], bins) for i, n in enumerate(names)},
        score_histogram=histogram(np.asarray(trained.reference_scores), bins),
        members=members,
        opsets=opsets,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        feature_context=dict(getattr(trained, "feature_context", None) or {}),
    )


def choose_probe_rows(features: np.ndarray, scores: np.ndarray, k: int = PROBE_ROWS) -> np.ndarray:
    """Indices of ``k`` rows spread over the score range (lowest, highest, quantiles between).

    Spreading them exercises both ends of the trees, so a graph that scores every row
    alike (a wrong input order, a truncated ensemble) cannot match the stored scores.
    """
    if features.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(scores, kind="stable")
    picks = np.unique(np.round(np.linspace(0, order.size - 1, min(k, order.size))).astype(int))
    return np.sort(order[picks])


def with_probes(model: onnx.ModelProto, metadata: ModelMetadata, rows: np.ndarray) -> bytes:
    """Serialized ``model`` whose metadata holds ``rows`` and the graph's own scores of them."""
    from dataclasses import replace

    from export.model import ScoringModel

    rows = np.ascontiguousarray(rows, dtype=np.float32)
    set_metadata(model, metadata)
    draft = ScoringModel.from_bytes(model.SerializeToString(), "<export>", None, probe=False)
    scores = draft.predict(rows) if rows.shape[0] else np.zeros(0, np.float32)
    final = replace(metadata, probe_rows=tuple(tuple(float(v) for v in r) for r in rows),
                    probe_scores=tuple(float(s) for s in scores))
    set_metadata(model, final)
    return model.SerializeToString()


def export_trained(trained: Any, model_version: str | None = None) -> tuple[bytes, ParityReport]:
    """Convert a ``TrainedModel``, embed metadata and probe rows, check parity; return bytes."""
    version = model_version or trained.model_version
    names = tuple(trained.feature_names)
    model = to_onnx(trained.ensemble, len(names))
    metadata = build_metadata(trained, version, opsets_of(model))
    holdout = np.ascontiguousarray(trained.holdout_features, dtype=np.float32)
    native = trained.ensemble.predict_proba(holdout)[:, 1]
    data = with_probes(model, metadata, holdout[choose_probe_rows(holdout, native)])
    report = check_parity(data, native, holdout, trained.thresholds)
    return data, report


def reference_table(trained: Any, model_bytes: bytes) -> pa.Table:
    """The training reference rows for ``just drift-report``: features, score, decision, label.

    Rows are ``trained.reference_features`` (a sample of training rows; the PSI histograms
    come from the same rows), scored by the exported ONNX model itself, so reference and
    stream scores come from one code path. Being training rows, their scores are in-sample:
    somewhat more confident than on unseen traffic. ``is_fraud`` (the eventual label) is
    present when the artifact has ``reference_labels``.
    """
    from export.model import ScoringModel

    scorer = ScoringModel.from_bytes(model_bytes, source="<export>", expected_feature_spec=None)
    ref = np.ascontiguousarray(trained.reference_features, dtype=np.float32)
    scores = scorer.predict(ref)
    columns: dict[str, Any] = {name: ref[:, i] for i, name in enumerate(trained.feature_names)}
    columns["score"] = scores
    columns["decision"] = pa.array(scorer.decide(scores).tolist(), pa.string())
    labels = getattr(trained, "reference_labels", None)
    if labels is not None:
        columns["is_fraud"] = np.asarray(labels, dtype=bool)
    return pa.table(columns)
