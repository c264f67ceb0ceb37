"""Test-session wiring shared by every tier."""

from __future__ import annotations

import pytest

from samples import BAD_MESSAGES


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise any test taking ``bad_message`` over every kind of bad input."""
    if "bad_message" in metafunc.fixturenames:
        metafunc.parametrize("bad_message", BAD_MESSAGES, ids=[m.kind for m in BAD_MESSAGES])
