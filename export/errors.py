"""Typed errors of the export room; each message says what to do about it."""

from __future__ import annotations

from topics.errors import FraudStreamError

#: What to run to get a servable model; quoted by every loader error.
REMEDY = "train and export a model: `just train DATA=<history>` then `just export-onnx`"


class ExportError(FraudStreamError):
    """The trained model could not be exported to ONNX."""


class ParityError(ExportError):
    """ONNX and native scores or decisions disagree; the model is not published."""


class RegistryError(ExportError):
    """The model registry on disk refuses the operation (existing version, missing files)."""


class ModelLoadError(FraudStreamError):
    """A servable model file is missing, corrupt or lacks its metadata."""


class FeatureSpecMismatch(ModelLoadError):
    """The model was trained on another feature-spec version than the running code computes."""


class ModelProbeError(ModelLoadError):
    """The ONNX graph disagrees with its metadata, or its probe prediction is wrong."""


class GateError(ExportError):
    """Validation gates cannot be evaluated (bad configuration, unreadable champion)."""


class LifecycleError(RegistryError):
    """A promotion, rollback or shadow change is not allowed in the registry's current state."""
