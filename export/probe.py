"""Probe a model before it serves: graph shapes against the metadata, then one prediction.

The checks, in order (each failure raises :class:`~export.errors.ModelProbeError`
with a one-line cause and remedy):

1. the graph has one input ``features``: float32, rank 2, width = the number of
   named features (a symbolic width is left to step 3);
2. it has the ``probabilities`` output: float32, rank 2, two columns;
3. it scores the probe rows stored at export (``fraudstream.probe_rows``): the
   result is ``[k, 2]``, finite, in [0, 1], rows sum to 1, and the fraud column
   equals the stored ``probe_scores`` within :data:`export.parity.PARITY_TOLERANCE`.
   A model exported before probe rows existed is probed with one row of its
   reference-histogram medians (shape and range only).

Cost: one onnxruntime call on a handful of rows (well under a millisecond for
the production ensemble), at start-up and on each hot reload.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from export.errors import ModelProbeError
from export.metadata import INPUT_NAME, PROBA_OUTPUT, ModelMetadata
from export.parity import PARITY_TOLERANCE

#: Slack on the [0, 1] range and on the row sum of the probability pair.
RANGE_SLACK = 1e-5

_REEXPORT = ("the graph and its metadata do not belong together: re-export the model with "
             "`just export-onnx` (never edit model.onnx or its metadata by hand)")


def _dims(shape: Any) -> list[int | None]:
    return [d if isinstance(d, int) and d > 0 else None for d in (shape or [])]


def check_graph(session: Any, meta: ModelMetadata) -> None:
    """Input and output signatures of an onnxruntime ``session`` against ``meta``."""
    n = len(meta.feature_names)
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        names = [i.name for i in inputs]
        raise ModelProbeError(f"graph inputs are {names}, expected [{INPUT_NAME!r}]; {_REEXPORT}")
    inp = inputs[0]
    dims = _dims(inp.shape)
    if inp.type != "tensor(float)" or len(dims) != 2:
        raise ModelProbeError(
            f"graph input {INPUT_NAME!r} is {inp.type} of rank {len(dims)}, expected a float32 "
            f"[N, {n}] matrix; {_REEXPORT}"
        )
    if dims[1] is not None and dims[1] != n:
        raise ModelProbeError(
            f"graph takes {dims[1]} feature columns but its metadata names {n} features; "
            f"{_REEXPORT}"
        )
    outputs = {o.name: o for o in session.get_outputs()}
    out = outputs.get(PROBA_OUTPUT)
    if out is None:
        raise ModelProbeError(
            f"graph outputs are {sorted(outputs)}, expected {PROBA_OUTPUT!r}; {_REEXPORT}"
        )
    odims = _dims(out.shape)
    if out.type != "tensor(float)" or len(odims) != 2 or odims[1] not in (None, 2):
        raise ModelProbeError(
            f"graph output {PROBA_OUTPUT!r} is {out.type} {out.shape}, expected float32 [N, 2] "
            f"(legitimate, fraud); {_REEXPORT}"
        )


def probe_rows(meta: ModelMetadata) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows to probe with (float32 ``[k, F]``) and their expected fraud probabilities."""
    n = len(meta.feature_names)
    if not meta.probe_rows:
        return meta.median_row(), None
    rows = np.asarray(meta.probe_rows, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[1] != n or len(meta.probe_scores) != rows.shape[0]:
        raise ModelProbeError(
            f"metadata probe rows are {rows.shape} with {len(meta.probe_scores)} expected scores, "
            f"but it names {n} features; {_REEXPORT}"
        )
    return rows, np.asarray(meta.probe_scores, dtype=np.float64)


def check_prediction(proba: Any, rows: np.ndarray, expected: np.ndarray | None) -> None:
    """The probability output for ``rows`` against the range rules and ``expected``."""
    p = np.asarray(proba, dtype=np.float64)
    k = rows.shape[0]
    if p.shape != (k, 2):
        raise ModelProbeError(
            f"probe: {k} rows gave probabilities of shape {p.shape}, expected ({k}, 2); {_REEXPORT}"
        )
    bad = ~np.isfinite(p).all(axis=1) | (p < -RANGE_SLACK).any(axis=1) | (
        p > 1 + RANGE_SLACK).any(axis=1) | (np.abs(p.sum(axis=1) - 1.0) > 1e-4)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ModelProbeError(
            f"probe: row {i} gave {p[i].tolist()}, not a probability pair; {_REEXPORT}"
        )
    if expected is not None:
        diff = np.abs(p[:, 1] - expected)
        if not diff.max() <= PARITY_TOLERANCE:
            i = int(diff.argmax())
            raise ModelProbeError(
                f"probe: row {i} scored {p[i, 1]:.8f}, the export recorded {expected[i]:.8f} "
                f"(|diff| {diff[i]:.2e} > {PARITY_TOLERANCE:g}); the file changed after export or "
                "this onnxruntime computes differently: re-export with `just export-onnx` on "
                "this environment"
            )


def probe_session(session: Any, meta: ModelMetadata, source: str) -> None:
    """All checks of the module docstring; errors are prefixed with ``source`` and version."""
    try:
        check_graph(session, meta)
        rows, expected = probe_rows(meta)
        try:
            proba = session.run([PROBA_OUTPUT], {INPUT_NAME: np.ascontiguousarray(rows)})[0]
        except Exception as exc:  # onnxruntime raises its own exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelProbeError(
                f"probe: the graph fails on {rows.shape[0]} probe row(s) of {rows.shape[1]} "
                f"features ({first}); {_REEXPORT}"
            ) from exc
        check_prediction(proba, rows, expected)
    except ModelProbeError as exc:
        raise ModelProbeError(f"{source}: model {meta.model_version!r} refused: {exc}") from exc
