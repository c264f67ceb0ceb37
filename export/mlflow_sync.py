"""Mirror the local registry into MLflow when ``MLFLOW_TRACKING_URI`` is set.

The local registry (``models/``, :mod:`export.lifecycle`) is the source of truth: the
flow reads ``models/current``. MLflow gets a copy for the people and tools that
expect it:

- training runs (:mod:`training.tracking`): parameters, metrics, report and plots;
- each exported version: ``model.onnx``, ``MODEL_CARD.md`` and ``gates.json`` logged
  to the training run (``mlflow_run.json`` in the training directory names it; else
  a new run), and registered as a version of the registered model
  ``FRAUD_MLFLOW_MODEL_NAME`` (default ``fraudstream``) with tags
  ``fraudstream.version`` and ``fraudstream.state``;
- lifecycle changes: the ``fraudstream.state`` tag, and the aliases ``champion`` and
  ``challenger`` (MLflow's replacement for the deprecated registry stages).

Backends: any tracking URI the client supports; tested with a local
``sqlite:///path/mlflow.db`` (needs SQLAlchemy and Alembic next to ``mlflow-skinny``;
artifacts go to ``mlartifacts/`` beside the database) and ``file:///path/mlruns``
(MLflow 3 keeps the file store in maintenance mode; we set
``MLFLOW_ALLOW_FILE_STORE=true`` for such URIs). Experiment: ``MLFLOW_EXPERIMENT_NAME``
(default ``fraudstream``). A failing MLflow call is reported as a warning by the
lifecycle commands, never blocks a promotion or rollback.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from topics.errors import ConfigError

TRACKING_ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
MODEL_NAME_ENV = "FRAUD_MLFLOW_MODEL_NAME"
DEFAULT_NAME = "fraudstream"
RUN_FILE = "mlflow_run.json"
VERSION_TAG = "fraudstream.version"
STATE_TAG = "fraudstream.state"
ALIASES = ("champion", "challenger")


def tracking_uri(env: Mapping[str, str] | None = None) -> str | None:
    """``MLFLOW_TRACKING_URI`` if set (None: MLflow is off, the local registry works alone)."""
    env = os.environ if env is None else env
    return env.get(TRACKING_ENV, "").strip() or None


def _artifact_location(uri: str) -> str | None:
    """``mlartifacts/`` beside a SQLite database; None (the server's default) otherwise."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def client_for(uri: str) -> Any:
    """An ``MlflowClient`` on ``uri`` (tracking and registry)."""
    if urlparse(uri).scheme in ("", "file"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        from mlflow import MlflowClient
    except ImportError as exc:
        raise ConfigError(
            f"{TRACKING_ENV} is set ({uri}) but MLflow is not installed here: install the "
            "`mlflow` extra (pip install 'fraudstream[mlflow]'; the dev environment has it), "
            f"or unset {TRACKING_ENV}"
        ) from exc

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(client: Any, uri: str, name: str) -> str:
    """Id of experiment ``name``, created (artifacts beside a SQLite store) if missing."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    return str(client.create_experiment(name, artifact_location=_artifact_location(uri)))


class MlflowSync:
    """Registered-model operations for one tracking URI and model name."""

    def __init__(self, uri: str, model_name: str = DEFAULT_NAME,
                 experiment: str = DEFAULT_NAME) -> None:
        self.uri = uri
        self.model_name = model_name
        self.experiment = experiment
        self.client = client_for(uri)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MlflowSync | None:
        """A sync when ``MLFLOW_TRACKING_URI`` is set, else None."""
        env = os.environ if env is None else env
        uri = tracking_uri(env)
        if uri is None:
            return None
        return cls(uri, env.get(MODEL_NAME_ENV, "").strip() or DEFAULT_NAME,
                   env.get(EXPERIMENT_ENV, "").strip() or DEFAULT_NAME)

    def _registered(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.model_name)
        except MlflowException:
            self.client.create_registered_model(
                self.model_name, description="Card-fraud ensemble (XGBoost + RandomForest, ONNX) "
                "published by fraudstream; aliases champion/challenger follow models/current and "
                "models/shadow.")

    def find(self, version: str) -> str | None:
        """The MLflow model version registered for our ``version``, if any."""
        for mv in self.client.search_model_versions(f"name='{self.model_name}'"):
            if (mv.tags or {}).get(VERSION_TAG) == version:
                return str(mv.version)
        return None

    def log_export(
        self, version: str, version_dir: Path, state: str, run_id: str | None = None
    ) -> str:
        """Log the published files to ``run_id`` (or a new run) and register the version.

        Returns the MLflow model version number (a string).
        """
        if run_id is None:
            run = self.client.create_run(
                experiment_id(self.client, self.uri, self.experiment),
                run_name=f"export {version}", tags={VERSION_TAG: version})
            run_id = run.info.run_id
            created = True
        else:
            created = False
        for name in ("model.onnx", "MODEL_CARD.md", "gates.json"):
            path = Path(version_dir) / name
            if path.is_file():
                self.client.log_artifact(run_id, str(path), "model")
        self.client.set_tag(run_id, VERSION_TAG, version)
        if created:
            self.client.set_terminated(run_id)
        self._registered()
        existing = self.find(version)
        if existing is not None:
            self.set_state(version, state)
            return existing
        mv = self.client.create_model_version(
            self.model_name, f"runs:/{run_id}/model", run_id,
            tags={VERSION_TAG: version, STATE_TAG: state},
            description=f"fraudstream model {version}")
        return str(mv.version)

    def set_state(self, version: str, state: str) -> None:
        """Tag our ``version`` with its lifecycle state (no-op if it was never registered)."""
        mv = self.find(version)
        if mv is not None:
            self.client.set_model_version_tag(self.model_name, mv, STATE_TAG, state)

    def set_alias(self, alias: str, version: str | None) -> None:
        """Point ``alias`` at our ``version``'s MLflow version, or delete it (None)."""
        if version is None:
            from mlflow.exceptions import MlflowException

            with contextlib.suppress(MlflowException):  # no such alias: nothing to delete
                self.client.delete_registered_model_alias(self.model_name, alias)
            return
        mv = self.find(version)
        if mv is not None:
            self.client.set_registered_model_alias(self.model_name, alias, mv)

    def alias(self, alias: str) -> str | None:
        """Our version the MLflow ``alias`` points at, if any."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(self.model_name, alias)
        except MlflowException:
            return None
        return (mv.tags or {}).get(VERSION_TAG)

    def listener(self, version: str, state: str, aliases: dict[str, str | None]) -> None:
        """A :data:`export.lifecycle.Listener`: state tag and aliases."""
        self.set_state(version, state)
        for alias, target in aliases.items():
            self.set_alias(alias, target)


def read_run_id(train_dir: Path) -> str | None:
    """The MLflow run id :mod:`training.tracking` recorded in a training directory."""
    path = Path(train_dir) / RUN_FILE
    try:
        return str(json.loads(path.read_text())["run_id"])
    except (OSError, ValueError, KeyError):
        return None
