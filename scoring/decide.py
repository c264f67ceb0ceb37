"""Decide a batch: champion (and shadow) scores, thresholds, rules and lists, policy, reasons.

A pure function from a batch's feature matrix and the transactions behind it to
arrays of decisions, like scikit-learn's ``predict`` over a matrix:

1. the champion scores every row in one ONNX call and its thresholds (with the
   ``FRAUD_*_THRESHOLD`` overrides, :func:`scoring.serving.serving_thresholds`) give
   the model's decision;
2. the rule book, when it holds rules, evaluates every rule in force over the batch
   (:meth:`rules.book.RuleBook.evaluate`) and the decision policy combines the hits
   with the model's decision (:func:`scoring.policy.apply`);
3. rows the **model** flagged (review or decline) get reason codes
   (:class:`scoring.reasons.ReasonExplainer`); approvals cost nothing;
4. the shadow, when there is one, scores the same rows and decides at its own
   thresholds; it never changes a decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rules.batch import RuleBatch
from rules.book import Outcome, RuleBook
from scoring import policy
from scoring.serving import Serving
from state.spec import FEATURE_NAMES
from topics.contracts import ReasonCode, Transaction


@dataclass(frozen=True)
class Decided:
    """The decisions of a batch of ``n`` rows (arrays in row order).

    ``scores`` float32 ``[n]``; ``model_decision`` and ``decision`` ``<U7 [n]``
    (``decision`` after the rules); ``reasons[i]``: the model's reason codes of a
    flagged row (absent: none); ``rules``/``policy``: what the rules hit and how the
    policy combined them (None when the book holds no rules); ``shadow_scores`` and
    ``shadow_decision`` when a shadow scored the batch.
    """

    champion: Serving
    scores: np.ndarray
    model_decision: np.ndarray
    decision: np.ndarray
    reasons: dict[int, list[ReasonCode]]
    rules: Outcome | None = None
    policy: policy.Policy | None = None
    shadow: Serving | None = None
    shadow_scores: np.ndarray | None = None
    shadow_decision: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores)


def decide(features: np.ndarray, txns: Sequence[Transaction], amount_reference: np.ndarray,
           champion: Serving, shadow: Serving | None = None,
           book: RuleBook | None = None) -> Decided:
    """Decide every row of ``features`` (float32 ``[n, F]``), transaction ``txns[i]``.

    ``amount_reference`` (float64 ``[n]``) is the amount the features used, in the
    reference currency (rules read it). Raises what the model raises on a matrix of
    the wrong shape (the flow probes every model before it serves).
    """
    scores = champion.model.predict(features)
    model_decision = champion.thresholds.decide(scores)
    outcome = applied = None
    decision = model_decision
    if book is not None and book.has_rules:
        batch = RuleBatch.from_transactions(txns, features, FEATURE_NAMES, scores,
                                            model_decision, amount_reference=amount_reference)
        outcome = book.evaluate(batch)
        applied = policy.apply(outcome)
        decision = applied.decision
    flagged = np.flatnonzero(model_decision != "approve")
    reasons: dict[int, list[ReasonCode]] = {}
    if flagged.size:
        explained = champion.explainer.explain(features[flagged], scores[flagged])
        reasons = dict(zip(flagged.tolist(), explained, strict=True))
    shadow_scores = shadow_decision = None
    if shadow is not None:
        shadow_scores = shadow.model.predict(features)
        shadow_decision = shadow.thresholds.decide(shadow_scores)
    return Decided(champion, scores, model_decision, decision, reasons, outcome, applied,
                   shadow, shadow_scores, shadow_decision)
