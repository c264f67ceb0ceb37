"""The ONNX-versus-native parity record and tolerance, shared by export, registry and loader.

Kept apart from :mod:`export.onnx` (which converts) so that the registry and the
model card can name a parity outcome without importing the converter.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Largest accepted |native - onnx| fraud-probability difference (absolute, probability units).
#: The loader's probe uses it too: a served model must reproduce its export-time probabilities.
PARITY_TOLERANCE = 1e-5


@dataclass(frozen=True, slots=True)
class ParityReport:
    """Outcome of a parity check: rows compared, largest difference, decision mismatches."""

    rows: int
    max_abs_diff: float
    decision_mismatches: int
