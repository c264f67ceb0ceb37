"""Log a training run to MLflow when ``MLFLOW_TRACKING_URI`` is set (else do nothing).

``log_training_run(trained, out_dir)`` records, in experiment ``MLFLOW_EXPERIMENT_NAME``
(default ``fraudstream``):

- parameters: the training configuration (``TrainedModel.params``), feature-spec
  version, number of features, thresholds and the selected imbalance strategy;
- metrics: every numeric metric of the ensemble and of each member on the
  validation and test periods (``test_average_precision``, ``test_xgb_auc_roc``, ...)
  and the two thresholds;
- artifacts: ``report.md``, ``metrics.json`` and the PNG plots under ``report/``;
- tags: ``fraudstream.version`` (the model version) and the feature-spec version.

The run id is written to ``out_dir/mlflow_run.json`` so that ``just export-onnx``
logs the ONNX model to the same run and registers it (:mod:`export.mlflow_sync`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from export.mlflow_sync import (
    DEFAULT_NAME,
    EXPERIMENT_ENV,
    RUN_FILE,
    VERSION_TAG,
    client_for,
    experiment_id,
    tracking_uri,
)

#: MLflow refuses longer parameter values.
MAX_PARAM = 6000


def _params(trained: Any) -> dict[str, str]:
    params: dict[str, Any] = dict(getattr(trained, "params", {}) or {})
    params["feature_spec_version"] = trained.feature_spec_version
    params["n_features"] = len(trained.feature_names)
    selected = trained.metrics.get("selection", {}).get("selected", {})
    for key in ("strategy", "xgb_params", "xgb_weight"):
        if key in selected:
            params[f"selected_{key}"] = selected[key]
    context = getattr(trained, "feature_context", None)
    if context:
        params["feature_context"] = context
    return {k: (v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str))[:MAX_PARAM]
            for k, v in params.items()}


def _metrics(trained: Any) -> dict[str, float]:
    out: dict[str, float] = {"threshold_review": float(trained.thresholds.review),
                             "threshold_decline": float(trained.thresholds.decline)}
    for period in ("validation", "test"):
        for member, values in (trained.metrics.get(period) or {}).items():
            prefix = period if member == "ensemble" else f"{period}_{member}"
            for key, value in values.items():
                if isinstance(value, int | float) and not isinstance(value, bool) \
                        and value == value:  # NaN (AUC of one class) is left out
                    out[f"{prefix}_{key}"] = float(value)
    return out


def log_training_run(trained: Any, out_dir: Path) -> str | None:
    """Log ``trained`` (a ``TrainedModel``) and its report in ``out_dir``; return the run id.

    Returns None, doing nothing, when ``MLFLOW_TRACKING_URI`` is not set.
    """
    import os

    uri = tracking_uri()
    if uri is None:
        return None
    from mlflow.entities import Metric, Param, RunTag

    client = client_for(uri)
    exp = experiment_id(client, uri, os.environ.get(EXPERIMENT_ENV, "").strip() or DEFAULT_NAME)
    run = client.create_run(exp, run_name=f"train {trained.model_version}",
                            tags={VERSION_TAG: trained.model_version,
                                  "fraudstream.feature_spec": str(trained.feature_spec_version)})
    run_id = run.info.run_id
    import time

    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in _metrics(trained).items()],
        params=[Param(k, v) for k, v in _params(trained).items()],
        tags=[RunTag("mlflow.note.content",
                     f"fraudstream training run for model {trained.model_version}")],
    )
    out_dir = Path(out_dir)
    for path in sorted(out_dir.iterdir()) if out_dir.is_dir() else []:
        if path.name in ("report.md", "metrics.json") or path.suffix == ".png":
            client.log_artifact(run_id, str(path), "report")
    client.set_terminated(run_id)
    (out_dir / RUN_FILE).write_text(json.dumps({"run_id": run_id, "tracking_uri": uri}) + "\n")
    return str(run_id)
