"""The demo's model bootstrap: a model rejected by a validation gate stops it with the way on."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from demo.model import ModelBootstrapError, export_model
from export.handover import Handover
from tiny_model import train_tiny
from training.artifact import TrainedModel


def trained_with_handover(out: Path) -> TrainedModel:
    """The tiny model, trained into ``out`` with the hand-over `just train` writes."""
    trained = train_tiny(out)
    Handover.from_trained(trained).save(out)
    return trained


def test_a_rejected_model_stops_the_demo_with_a_remedy_that_works(tmp_path: Path) -> None:
    trained = trained_with_handover(tmp_path / "train")
    models = tmp_path / "models"
    with pytest.raises(ModelBootstrapError) as caught:
        export_model(tmp_path / "train", models, ["--gate", "min_auc_roc=0.9999"])
    message = str(caught.value)
    assert f"({trained.model_version}) was published as REJECTED" in message
    assert not (models / "current").exists()  # nothing to serve, as the message says
    assert (models / trained.model_version).is_dir()
    # the first remedy the message gives, run as it is written, makes the model current
    promote = re.search(r"`python -m (export\.cli [^`]*promote [^`]*)`", message)
    assert promote, message
    done = subprocess.run([sys.executable, "-m", *shlex.split(promote[1])], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (models / "current").resolve().name == trained.model_version


def test_an_accepted_model_becomes_current(tmp_path: Path) -> None:
    trained = trained_with_handover(tmp_path / "train")
    current = export_model(tmp_path / "train", tmp_path / "models", ["--gate", "min_auc_roc=0.5"])
    assert current == tmp_path / "models" / "current"
    assert current.resolve().name == trained.model_version
