"""Load a published ONNX model for scoring: the one entry point the streaming flow uses.

``load_model`` accepts the ``.onnx`` file, a version directory or ``models/current``,
checks the embedded metadata against the running feature spec, **probes** the model
(:mod:`export.probe`: graph input/output shapes against the metadata, then a prediction
on the probe rows stored at export) and returns a :class:`ScoringModel` with one
onnxruntime session (1 intra-op thread). A model that fails any check raises a
:class:`~export.errors.ModelLoadError` subclass, so the flow refuses it at start-up and
keeps the old one on a hot reload.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from export.errors import REMEDY, FeatureSpecMismatch, ModelLoadError
from export.metadata import INPUT_NAME, PROBA_OUTPUT, ModelMetadata, Thresholds

MODEL_FILE = "model.onnx"


class _FromStateSpec:
    """Sentinel: compare with ``state.spec`` at load time."""


FROM_STATE_SPEC: Any = _FromStateSpec()


def _state_spec() -> tuple[str, tuple[str, ...]]:
    from state.spec import FEATURE_NAMES, FEATURE_SPEC_VERSION

    return str(FEATURE_SPEC_VERSION), tuple(FEATURE_NAMES)


class ScoringModel:
    """An ONNX fraud model with its metadata; ``predict`` takes float32 ``[n, F]`` batches."""

    def __init__(self, session: Any, metadata: ModelMetadata, source: str) -> None:
        self._session = session
        self.metadata = metadata
        self.source = source
        self._n = len(metadata.feature_names)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        source: str = "<bytes>",
        expected_feature_spec: tuple[str, tuple[str, ...]] | None = None,
        probe: bool = True,
    ) -> ScoringModel:
        """Build from serialized ONNX; ``expected_feature_spec`` is ``(version, names)``.

        ``probe`` runs :func:`export.probe.probe_session` (raises
        :class:`~export.errors.ModelProbeError`); export turns it off while the probe
        rows are being chosen.
        """
        import onnx
        import onnxruntime as ort

        try:
            proto = onnx.load_from_string(data)
            props = {p.key: p.value for p in proto.metadata_props}
            metadata = ModelMetadata.from_props(props)
        except KeyError as exc:
            raise ModelLoadError(
                f"{source}: ONNX file has no fraudstream metadata ({exc.args[0]} missing); was it "
                f"exported by `just export-onnx`? To fix, {REMEDY}"
            ) from exc
        except Exception as exc:
            raise ModelLoadError(f"{source}: not a readable ONNX model ({exc}); {REMEDY}") from exc
        if expected_feature_spec is not None:
            version, names = expected_feature_spec
            if metadata.feature_spec_version != version or metadata.feature_names != names:
                what = (
                    f"feature spec {metadata.feature_spec_version!r}, the code computes {version!r}"
                    if metadata.feature_spec_version != version
                    else "the same spec version but different feature names/order"
                )
                raise FeatureSpecMismatch(
                    f"{source}: model {metadata.model_version!r} was trained on {what}. "
                    f"Retrain on the current features: {REMEDY}"
                )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelLoadError(f"{source}: onnxruntime cannot load it ({exc}); {REMEDY}") from exc
        if probe:
            from export.probe import probe_session

            probe_session(session, metadata, source)
        return cls(session, metadata, source)

    @property
    def version(self) -> str:
        """Model version, e.g. ``fs1-20250101T120000``."""
        return self.metadata.model_version

    @property
    def feature_spec_version(self) -> str:
        """Feature-spec version the model was trained on."""
        return self.metadata.feature_spec_version

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Ordered input feature names."""
        return self.metadata.feature_names

    @property
    def thresholds(self) -> Thresholds:
        """Review and decline thresholds chosen at training."""
        return self.metadata.thresholds

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Fraud probability per row of a float32 ``[n, F]`` batch (float32 ``[n]``)."""
        if batch.ndim != 2 or batch.shape[1] != self._n:
            raise ValueError(f"expected a [n, {self._n}] batch, got shape {batch.shape}")
        if batch.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        x = np.ascontiguousarray(batch, dtype=np.float32)
        proba = self._session.run([PROBA_OUTPUT], {INPUT_NAME: x})[0]
        return np.asarray(proba[:, 1], dtype=np.float32)

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """``approve`` / ``review`` / ``decline`` per score, at the model's thresholds."""
        return self.thresholds.decide(scores)


def resolve_model_file(path: Path) -> Path:
    """The ``model.onnx`` inside a directory (or ``models/current``), or ``path`` itself."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    return path


def load_model(
    path: str | Path, expected_feature_spec: Any = FROM_STATE_SPEC
) -> ScoringModel:
    """Load and check a published model.

    ``expected_feature_spec`` is ``(version, names)``; by default it is taken from
    ``state.spec``; ``None`` skips the check (tools that only inspect a file).
    Raises :class:`ModelLoadError` (missing/corrupt), :class:`FeatureSpecMismatch` or
    :class:`~export.errors.ModelProbeError` (graph shapes or probe predictions disagree
    with the metadata).
    """
    file = resolve_model_file(Path(path))
    if not file.is_file():
        raise ModelLoadError(f"no model at {file}; {REMEDY}")
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read {file}: {exc}; {REMEDY}") from exc
    expected = _state_spec() if isinstance(expected_feature_spec, _FromStateSpec) else (
        expected_feature_spec
    )
    return ScoringModel.from_bytes(data, str(file), expected)
