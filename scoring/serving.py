"""The model a batch is scored with, its thresholds, and the ``FRAUD_*_THRESHOLD`` overrides."""

from __future__ import annotations

from dataclasses import dataclass

from export.metadata import Thresholds
from export.model import ScoringModel
from scoring.reasons import ReasonExplainer
from topics.errors import ConfigError


@dataclass(frozen=True)
class Serving:
    """One loaded model with the thresholds and explainer it is served with."""

    model: ScoringModel
    thresholds: Thresholds
    explainer: ReasonExplainer

    @property
    def version(self) -> str:
        """The model version verdicts name."""
        return self.model.version


def serving_thresholds(model: ScoringModel, review: float | None = None,
                       decline: float | None = None) -> Thresholds:
    """The model's thresholds, with overrides (``FRAUD_*_THRESHOLD``; 0.0 is an override).

    Raises :class:`~topics.errors.ConfigError` when the review threshold would end up
    above the decline threshold.
    """
    ours = model.thresholds
    r = ours.review if review is None else review
    d = ours.decline if decline is None else decline
    if r > d:
        raise ConfigError(
            f"review threshold {r} would be above decline threshold {d}; "
            "set FRAUD_REVIEW_THRESHOLD and FRAUD_DECLINE_THRESHOLD together"
        )
    policy = ours.policy
    if (r, d) != (ours.review, ours.decline):
        policy = f"overridden by FRAUD_*_THRESHOLD (model: {policy})"
    return Thresholds(review=r, decline=d, policy=policy)
