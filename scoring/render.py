"""Render a decided batch into ``predictions`` records (the verdict contract, JSON).

One :class:`~topics.contracts.Prediction` per row, encoded with msgspec. Rule hits
come first among the reasons (``rule:<id>`` with the rule's description, ``[shadow]``
for a shadow rule), then the model's reason codes; a verdict whose decision differs
from the model's carries ``model_decision``; while rules are in force every verdict
names the rule set.

A transaction whose amount no rate converted (``amount_reference`` NaN, see
:mod:`state.inputs`) gets ``amount_unrated: true``, no ``amount_reference``, and the
reason :func:`unrated_reason` naming its currency, after the rules' reasons and
before the model's: the model scored its amount features at their neutral values,
so no model reason names one of those (:data:`state.inputs.NEUTRAL_WHEN_UNRATED`).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np

from scoring.decide import Decided
from state.inputs import NEUTRAL_WHEN_UNRATED
from state.records import VerdictGist
from topics.contracts import Prediction, ReasonCode, RuleHit, Transaction
from topics.currency import MINOR_UNITS

_encode = msgspec.json.Encoder().encode
#: The ``feature`` of the reason an unrated amount gets (not a model feature).
UNRATED_REASON = "amount_unrated"


def unrated_reason(txn: Transaction, reference_currency: str, rate_table: str | None
                   ) -> ReasonCode:
    """Why the amount features of ``txn`` are neutral: its currency has no rate.

    Names the transaction currency (and the billing currency when the message had
    one), the reference currency and the rate table.
    """
    billed = (f" (billing {txn.billing_currency} had none either)"
              if txn.billing_currency is not None else "")
    table = f" in rate table {rate_table}" if rate_table else ""
    unlisted = "" if txn.currency in MINOR_UNITS else ", a code ISO 4217 does not list,"
    return ReasonCode(
        feature=UNRATED_REASON,
        text=f"amount in {txn.currency}{unlisted} not converted to {reference_currency}: no "
             f"exchange rate{table}{billed}; amount features scored at neutral values",
    )


def unrated_reasons(txn: Transaction, model_reasons: Sequence[ReasonCode],
                    reference_currency: str, rate_table: str | None) -> list[ReasonCode]:
    """The reasons of an unrated transaction: :func:`unrated_reason`, then the model's.

    Only the model's reasons that name a measured feature are kept, never one of the
    neutral placeholders (:data:`state.inputs.NEUTRAL_WHEN_UNRATED`).
    """
    return [unrated_reason(txn, reference_currency, rate_table),
            *(r for r in model_reasons if r.feature not in NEUTRAL_WHEN_UNRATED)]


def render(decided: Decided, txns: Sequence[Transaction], ingest_ms: np.ndarray,
           clamped: np.ndarray, amount_reference: np.ndarray, reference_currency: str,
           scored_ms: int, rate_table: str | None = None) -> list[bytes]:
    """The encoded verdict of every row of ``decided`` (same order as ``txns``).

    ``ingest_ms`` int64 Kafka record timestamps; ``clamped`` bool, the event time
    used was the record timestamp; ``amount_reference`` float64 in
    ``reference_currency``, NaN where no rate converted the amount; ``scored_ms``
    the verdicts' ``scored_time``; ``rate_table`` the version of the rate table.
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
            reference_currency=reference_currency,
            rate_table=rate_table,
        )
        unrated = amounts[i] != amounts[i]  # NaN: no rate converted the amount
        if unrated:
            prediction.amount_unrated = True
            prediction.reasons = unrated_reasons(txn, prediction.reasons,
                                                 reference_currency, rate_table)
        else:
            prediction.amount_reference = round(amounts[i], 6)
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


def gists(decided: Decided) -> list[bytes]:
    """The gist of every verdict :func:`render` makes of ``decided``, from its arrays.

    Byte for byte :func:`state.records.verdict_gist` of each rendered verdict, without
    decoding one again (what the merchant store keeps for label feedback).
    """
    version = decided.champion.version
    scores = decided.scores.tolist()
    decisions = decided.decision.tolist()
    if decided.shadow is None or decided.shadow_scores is None or (
            decided.shadow_decision is None):
        return [_encode(VerdictGist(s, d, version)) for s, d in zip(scores, decisions,
                                                                      strict=True)]
    shadow = decided.shadow.version
    return [_encode(VerdictGist(s, d, version, ss, sd, shadow)) for s, d, ss, sd in zip(
        scores, decisions, decided.shadow_scores.tolist(), decided.shadow_decision.tolist(),
        strict=True)]
