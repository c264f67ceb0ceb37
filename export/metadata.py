"""Model metadata carried inside the ONNX file (``metadata_props``) and reference histograms.

Every key is prefixed ``fraudstream.``; structured values are JSON. A histogram
is ``{"edges": [e1, ..., ek-1], "proportions": [p0, ..., pk-1]}``: bin ``i`` holds
values ``x`` with ``edges[i-1] <= x < edges[i]`` (open-ended first and last
bins), so ``numpy.searchsorted(edges, x, side="right")`` gives the bin of ``x``.
Drift (PSI) compares live proportions with these.

>>> h = histogram(np.array([0.0, 1.0, 2.0, 3.0], dtype=np.float32), bins=2)
>>> h
{'edges': [1.5], 'proportions': [0.5, 0.5]}
>>> bin_proportions(h["edges"], np.array([0.0, 0.0, 5.0]))
[0.6666666666666666, 0.3333333333333333]
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PREFIX = "fraudstream."
METADATA_VERSION = 1
INPUT_NAME = "features"
PROBA_OUTPUT = "probabilities"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Decision thresholds on the fraud score: decline at or above ``decline``, review above.

    >>> Thresholds(review=0.3, decline=0.8).decide(np.array([0.1, 0.3, 0.9])).tolist()
    ['approve', 'review', 'decline']
    """

    review: float
    decline: float
    policy: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.review <= self.decline <= 1.0:
            raise ValueError(
                f"thresholds must satisfy 0 <= review <= decline <= 1, got {self.review}, "
                f"{self.decline}"
            )

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """Decision per score: ``approve``, ``review`` or ``decline`` (numpy ``<U7`` array)."""
        out = np.full(scores.shape, "approve", dtype="<U7")
        out[scores >= self.review] = "review"
        out[scores >= self.decline] = "decline"
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"review": self.review, "decline": self.decline, "policy": self.policy}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Thresholds:
        """Inverse of :meth:`to_dict`."""
        return cls(float(d["review"]), float(d["decline"]), str(d.get("policy", "")))


def histogram(values: np.ndarray, bins: int = 10) -> dict[str, list[float]]:
    """Quantile histogram of ``values`` (NaN ignored): inner edges and proportions."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"edges": [], "proportions": [1.0]}
    qs = np.quantile(v, np.linspace(0, 1, bins + 1)[1:-1])
    # Midpoints between distinct neighbours would be nicer; unique quantiles are enough
    # and keep heavy point masses (e.g. zero counts) in one bin.
    edges = np.unique(qs)
    edges = edges[edges > v.min()]
    props = bin_proportions(edges.tolist(), v)
    return {"edges": [float(e) for e in edges], "proportions": props}


def bin_proportions(edges: Sequence[float], values: np.ndarray) -> list[float]:
    """Share of ``values`` in each bin defined by ``edges`` (see module docstring)."""
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(np.float64)
    total = counts.sum()
    return (counts / total).tolist() if total else counts.tolist()


@dataclass(frozen=True)
class ModelMetadata:
    """Everything a consumer of the ONNX file needs to know about the model in it."""

    model_version: str
    feature_spec_version: str
    feature_names: tuple[str, ...]
    thresholds: Thresholds
    training_metrics: dict[str, Any] = field(default_factory=dict)
    feature_histograms: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    score_histogram: dict[str, list[float]] = field(default_factory=dict)
    members: dict[str, float] = field(default_factory=dict)
    opsets: dict[str, int] = field(default_factory=dict)
    created_at: str = ""
    feature_partitions: int = 0
    """Legacy (metadata of older models): input partitions merchant features were replayed
    with, 0 = unknown. Read from old files, never written: features no longer depend on it."""
    feature_context: dict[str, Any] = field(default_factory=dict)
    """What besides the spec the features depend on (reference currency, rate-table version),
    JSON-ready; copied from ``TrainedModel.feature_context`` ({} for older artifacts)."""
    probe_rows: tuple[tuple[float, ...], ...] = ()
    """A few float32 feature rows (held-out transactions) the loader scores before serving."""
    probe_scores: tuple[float, ...] = ()
    """The fraud probabilities the exported graph gave ``probe_rows`` (float32 values)."""

    def to_props(self) -> dict[str, str]:
        """Flatten to ONNX ``metadata_props`` (string to string)."""
        values: dict[str, Any] = {
            "metadata_version": METADATA_VERSION,
            "model_version": self.model_version,
            "feature_spec_version": self.feature_spec_version,
            "feature_names": list(self.feature_names),
            "n_features": len(self.feature_names),
            "input_name": INPUT_NAME,
            "output_name": PROBA_OUTPUT,
            "thresholds": self.thresholds.to_dict(),
            "training_metrics": self.training_metrics,
            "feature_histograms": self.feature_histograms,
            "score_histogram": self.score_histogram,
            "members": self.members,
            "opsets": self.opsets,
            "created_at": self.created_at,
            "feature_context": self.feature_context,
        }
        if self.probe_rows:
            values["probe_rows"] = [[_json_float(v) for v in row] for row in self.probe_rows]
            values["probe_scores"] = [_json_float(v) for v in self.probe_scores]
        return {
            PREFIX + k: (v if isinstance(v, str) else json.dumps(v, sort_keys=True))
            for k, v in values.items()
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> ModelMetadata:
        """Rebuild from ``metadata_props``; raises ``KeyError``/``ValueError`` when incomplete."""

        def j(key: str) -> Any:
            return json.loads(props[PREFIX + key])

        return cls(
            model_version=props[PREFIX + "model_version"],
            feature_spec_version=props[PREFIX + "feature_spec_version"],
            feature_names=tuple(j("feature_names")),
            thresholds=Thresholds.from_dict(j("thresholds")),
            training_metrics=j("training_metrics"),
            feature_histograms=j("feature_histograms"),
            score_histogram=j("score_histogram"),
            members=j("members"),
            opsets={k: int(v) for k, v in j("opsets").items()},
            created_at=props.get(PREFIX + "created_at", ""),
            feature_partitions=int(props.get(PREFIX + "feature_partitions", "0")),
            feature_context=dict(j("feature_context")) if PREFIX + "feature_context" in props
            else {},
            probe_rows=tuple(tuple(float(v) for v in row) for row in j("probe_rows"))
            if PREFIX + "probe_rows" in props else (),
            probe_scores=tuple(float(v) for v in j("probe_scores"))
            if PREFIX + "probe_scores" in props else (),
        )

    def median_row(self) -> np.ndarray:
        """Float32 ``[1, F]`` row of each feature's reference-histogram median bin edge.

        The probe for models exported before probe rows existed; a feature without a
        histogram (or whose median is in the first bin) gets 0.
        """
        row = []
        for name in self.feature_names:
            hist = self.feature_histograms.get(name, {"edges": [], "proportions": [1.0]})
            cum = np.cumsum(np.asarray(hist["proportions"], dtype=np.float64))
            k = int(np.searchsorted(cum, 0.5))
            row.append(float(hist["edges"][k - 1]) if 0 < k <= len(hist["edges"]) else 0.0)
        return np.asarray([row], dtype=np.float32)


def _json_float(v: float) -> float | str:
    """A float as JSON can hold it: finite values exactly (``repr``), else ``"nan"``/``"inf"``."""
    f = float(v)
    return f if np.isfinite(f) else str(f)
