"""The model the demo serves: ``models/current``, or one bootstrapped now.

Without ``models/current``, the demo runs what a data scientist would: simulate
a labelled history of :data:`demo.world.WORLD`, train the ensemble on it, and
export it (ONNX, parity, validation gates, publication). A model that a
validation gate rejects is published as *rejected* and ``models/current`` does
not move: the demo then stops with what happened and how to go on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from demo.world import WORLD
from topics.errors import FraudStreamError

MODEL_DIR = Path("models")
TRAIN_DATA = Path("data/history.parquet")
TRAIN_DIR = Path("runs/train")
#: ``python -m export.release`` exit code: published, but rejected by a validation gate.
EXIT_REJECTED = 3


class ModelBootstrapError(FraudStreamError):
    """The demo could not make a model to serve; the message says what to do."""


def ensure_model(say: Callable[[str], None]) -> Path:
    """``models/current``, after simulating, training and exporting a model if it is missing.

    ``say`` gets a progress line. Raises :class:`ModelBootstrapError` when a step fails
    or the gates reject the model.
    """
    current = MODEL_DIR / "current"
    if current.exists():
        say(f"serving {current.resolve().name} from {current}")
        return current
    say("no models/current: simulating a history, training and exporting a model "
        "(a minute or two, once)")  # fmt: skip
    from training.simulate import main as simulate_main
    from training.train import main as train_main

    simulate = ["-n", str(WORLD.n_transactions), "--cards", str(WORLD.n_cards),
                "--days", str(WORLD.days), "--seed", str(WORLD.seed), "--out", str(TRAIN_DATA)]
    if simulate_main(simulate) != 0:
        raise ModelBootstrapError("simulating the training history failed; see the messages "
                                  "above")  # fmt: skip
    if train_main(["--data", str(TRAIN_DATA), "--out", str(TRAIN_DIR)]) != 0:
        raise ModelBootstrapError(f"training on {TRAIN_DATA} failed; see the messages above")
    return export_model(TRAIN_DIR, MODEL_DIR)


def export_model(train_dir: Path, models_dir: Path, extra: Sequence[str] = ()) -> Path:
    """Export the training output ``train_dir`` as the champion of ``models_dir``; its ``current``.

    Runs ``python -m export.release`` (ONNX, parity, validation gates, publication) with
    ``extra`` arguments (e.g. ``--gate NAME=VALUE``). Raises :class:`ModelBootstrapError`
    saying how to go on when a gate rejects the model, or naming the failure otherwise.
    """
    from export.release import main as export_main

    code = export_main(["--model", str(train_dir), "--models-dir", str(models_dir),
                        "--reason", "demo bootstrap", *extra])  # fmt: skip
    current = models_dir / "current"
    if code == EXIT_REJECTED:
        raise ModelBootstrapError(rejected_message(_trained_version(train_dir), train_dir,
                                                   models_dir))  # fmt: skip
    if code != 0 or not current.exists():
        raise ModelBootstrapError(f"exporting {train_dir} failed (exit {code}); see the "
                                  "messages above")  # fmt: skip
    return current


def rejected_message(version: str | None, train_dir: Path = TRAIN_DIR,
                     models_dir: Path = MODEL_DIR) -> str:
    """What to tell the user when the gates rejected the bootstrapped model, and the ways on."""
    name = version or "VERSION"
    registry = "" if models_dir == MODEL_DIR else f" --models-dir {models_dir}"
    return (
        f"the model trained for the demo ({name}) was published as REJECTED by a validation "
        "gate (the failed gates are listed above), so models/current was not set and there is "
        "nothing to serve. To go on, either accept it for the demo: "
        f"`python -m export.cli{registry} promote {name} --force --reason demo`; or export it "
        f"again under a new version with a looser limit: `python -m export.release --model "
        f"{train_dir}{registry} --version {name}-demo --gate NAME=VALUE`; or train on more "
        "history (`just simulate -n 1000000`, `just train`, `just export-onnx`). Then run the "
        "demo again."
    )


def _trained_version(train_dir: Path) -> str | None:
    """The trained model's version, from its hand-over manifest (never unpickles)."""
    try:
        import json

        from export.handover import MANIFEST, locate

        return str(json.loads((locate(train_dir) / MANIFEST).read_text())["model_version"])
    except Exception:  # only for the message: a missing or odd hand-over names no version
        return None
