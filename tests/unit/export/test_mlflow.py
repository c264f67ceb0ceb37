"""MLflow tracking and registry against a real local store (SQLite backend, mlflow-skinny)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from export.gates import GateConfig
from export.lifecycle import Lifecycle
from export.mlflow_sync import RUN_FILE, STATE_TAG, VERSION_TAG, MlflowSync
from export.release import release
from training.tracking import log_training_run

pytest.importorskip("mlflow")

LOOSE = GateConfig(max_drop_average_precision=1, max_drop_auc_roc=1, max_drop_card_precision=1)


def test_without_a_tracking_uri_nothing_is_logged(
    tiny: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert log_training_run(tiny.trained, tmp_path) is None
    assert MlflowSync.from_env() is None
    assert not (tmp_path / RUN_FILE).exists()


def test_training_run_export_and_lifecycle_reach_the_mlflow_registry(
    tiny: Any, other: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "fraud-test")
    run_dir = tmp_path / "run"
    shutil.copytree(tiny.out, run_dir)
    run_id = log_training_run(tiny.trained, run_dir)
    assert run_id is not None and (run_dir / RUN_FILE).is_file()

    sync = MlflowSync.from_env()
    assert sync is not None
    client = sync.client
    run = client.get_run(run_id)
    test = tiny.trained.metrics["test"]["ensemble"]
    assert run.data.metrics["test_average_precision"] == pytest.approx(test["average_precision"])
    assert run.data.metrics["threshold_decline"] == pytest.approx(tiny.trained.thresholds.decline)
    assert run.data.params["xgb_estimators"] == str(tiny.trained.params["xgb_estimators"])
    assert run.data.tags[VERSION_TAG] == tiny.trained.model_version
    report = {Path(f.path).name for f in client.list_artifacts(run_id, "report")}
    assert {"report.md", "metrics.json", "pr.png"} <= report
    artifacts = Path(client.get_experiment_by_name("fraud-test").artifact_location
                     .removeprefix("file://"))
    assert artifacts == (tmp_path / "mlartifacts").resolve()  # beside the database, not in cwd

    models = tmp_path / "models"
    first = release(tiny.trained, models, version="v-a", gates=LOOSE, report_dir=run_dir,
                    sync=sync)
    assert first.mlflow_version == "1" and not first.warnings
    model_files = {Path(f.path).name for f in client.list_artifacts(run_id, "model")}
    assert {"model.onnx", "MODEL_CARD.md", "gates.json"} <= model_files  # the training run
    assert sync.alias("champion") == "v-a"
    second = release(other.trained, models, version="v-b", gates=LOOSE, sync=sync)
    assert second.mlflow_version == "2" and sync.alias("champion") == "v-b"
    mv1 = client.get_model_version(sync.model_name, "1")
    assert mv1.tags[STATE_TAG] == "retired" and mv1.tags[VERSION_TAG] == "v-a"

    life = Lifecycle(models, listeners=[sync.listener])
    life.rollback(reason="test")
    assert sync.alias("champion") == "v-a"
    assert client.get_model_version(sync.model_name, "2").tags[STATE_TAG] == "retired"
    life.set_shadow("v-b")
    assert sync.alias("challenger") == "v-b"
    assert client.get_model_version(sync.model_name, "2").tags[STATE_TAG] == "shadow"
    life.clear_shadow()
    assert sync.alias("challenger") is None and not life.warnings

    rejected = release(tiny.trained, models, version="v-c", sync=sync,
                       gates=GateConfig(min_auc_roc=0.99999))
    assert rejected.state == "rejected" and sync.alias("champion") == "v-a"
    mv3 = client.get_model_version(sync.model_name, rejected.mlflow_version)
    assert mv3.tags[STATE_TAG] == "rejected"


def test_an_unreachable_mlflow_never_blocks_a_rollback(
    tiny: Any, other: Any, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    release(tiny.trained, models, version="v-a", gates=LOOSE)
    release(other.trained, models, version="v-b", gates=LOOSE)

    def down(version: str, state: str, aliases: dict[str, str | None]) -> None:
        raise ConnectionError("mlflow is down")

    life = Lifecycle(models, listeners=[down])
    assert life.rollback(reason="incident") == ("v-b", "v-a")
    assert life.champion() == "v-a"
    assert life.warnings and "mlflow is down" in life.warnings[0]
