"""Test-session wiring shared by every tier."""

from __future__ import annotations

from pathlib import Path

import pytest

from samples import BAD_MESSAGES


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise any test taking ``bad_message`` over every kind of bad input."""
    if "bad_message" in metafunc.fixturenames:
        metafunc.parametrize("bad_message", BAD_MESSAGES, ids=[m.kind for m in BAD_MESSAGES])


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ONNX model, trained on a tiny simulated history and published by our code."""
    from tiny_model import publish_tiny, train_tiny

    root = tmp_path_factory.mktemp("tiny-model")
    return publish_tiny(root / "models", train_tiny(root / "run"))
