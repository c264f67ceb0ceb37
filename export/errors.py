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
