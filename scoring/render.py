"""Render a decided batch into ``predictions`` records (the verdict contract, JSON).

One :class:`~topics.contracts.Prediction` per row, encoded with msgspec. Rule hits
come first among the reasons (``rule:<id>`` with the rule's description, ``[shadow]``
for a shadow rule), then the model's reason codes; a verdict whose decision differs
from the model's carries ``model_decision``; while rules are in force every verdict
names the rule set.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np

from scoring.decide import Decided
from topics.contracts import Prediction, RuleHit, Transaction

_encode = msgspec.json.Encoder().encode


def render(decided: Decided, txns: Sequence[Transaction], ingest_ms: np.ndarray,
           clamped: np.ndarray, amount_reference: np.ndarray, reference_currency: str,
           scored_ms: int) -> list[bytes]:
    """The encoded verdict of every row of ``decided`` (same order as ``txns``).

    ``ingest_ms`` int64 Kafka record timestamps; ``clamped`` bool, the event time
    used was the record timestamp; ``amount_reference`` float64 in
    ``reference_currency``; ``scored_ms`` the verdicts' ``scored_time``.
    """
    live = decided.champion
    version, spec = live.version, live.model.feature_spec_version
    scores = decided.scores.tolist()
    decisions = decided.decision.tolist()
    model_decisions = decided.model_decision.tolist()
    ingest = ingest_ms.tolist()
    late = clamped.tolist()
    amounts = amount_reference.tolist()
    reasons = decided.reasons
    outcome = decided.rules
    shadow = decided.shadow
    shadow_version = shadow.version if shadow is not None else None
    shadow_scores = (decided.shadow_scores.tolist() if decided.shadow_scores is not None
                     else None)
    shadow_decisions = (decided.shadow_decision.tolist()
                        if decided.shadow_decision is not None else None)
    out = []
    for i, txn in enumerate(txns):
        prediction = Prediction(
            transaction_id=txn.transaction_id,
            card_id=txn.card_id,
            event_time=txn.event_time,
            score=scores[i],
            decision=decisions[i],
            model_version=version,
            feature_spec_version=spec,
            reasons=reasons.get(i, []),
            ingest_time=ingest[i],
            scored_time=scored_ms,
            event_time_clamped=late[i],
            amount_reference=round(amounts[i], 6),
            reference_currency=reference_currency,
        )
        if outcome is not None:
            hits = outcome.hits[i]
            if hits:
                prediction.rule_hits = [RuleHit(
                    rule_id=h.rule_id, version=h.version, action=h.action, mode=h.mode,
                    text=h.text) for h in hits]
                prediction.reasons = outcome.reasons(i) + prediction.reasons
            if decisions[i] != model_decisions[i]:
                prediction.model_decision = model_decisions[i]
            prediction.rule_set_version = outcome.ruleset_version
        if shadow_scores is not None and shadow_decisions is not None:
            prediction.shadow_score = shadow_scores[i]
            prediction.shadow_decision = shadow_decisions[i]
            prediction.shadow_model_version = shadow_version
        out.append(_encode(prediction))
    return out
