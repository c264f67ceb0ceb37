"""The decision policy: how the model's decision and the rules' actions combine.

Per transaction, with the hits of the rules in force at its event time:

1. **A decline hit wins.** Any active ``decline`` rule that hits (blocklists are
   decline rules over a list, e.g. ``card_id in lists.blocked_cards``) declines,
   whatever the model or an allowlist says.
2. **An approve hit overrides the model**, not the analysts: an active
   ``approve`` rule (an allowlist, e.g. ``customer_id in lists.vip``) approves
   a transaction the model would review or decline, unless an active ``review``
   rule also hits, which then reviews (an analyst's explicit review is never
   silently suppressed; rule 1 already put decline rules above it).
3. **Otherwise the most severe wins**: decline > review > approve, between the
   model's decision and any active ``review`` hit.
4. ``tag`` rules never change a decision; they are recorded as hits.
5. **Shadow rules** are evaluated and counted, and never change anything: their
   hits appear in ``fraud_rule_hits_total{mode="shadow"}`` and, against the
   model's decision, in ``fraud_rule_model_overlap_total``, so an analyst sees
   what a rule would catch (and what the model already catches) before it is
   made active. ``just backtest-rules`` gives the same over a labelled history.

Hits are listed active first, then by ``priority`` (higher first), then by rule
id (:class:`rules.book.Outcome`); the decision's author (``decided_by``) is the
first active hit whose action is the final decision, else ``model``.

>>> import numpy as np
>>> model = np.array(["decline", "decline", "approve", "review"])
>>> combine(model, decline=np.array([0, 0, 0, 1], bool), review=np.array([0, 1, 1, 0], bool),
...         approve=np.array([1, 1, 0, 1], bool)).tolist()
['approve', 'review', 'review', 'decline']
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rules.book import Outcome

SEVERITY = {"approve": 0, "review": 1, "decline": 2}
_NAMES = np.array(["approve", "review", "decline"], dtype="<U7")


def combine(
    model: np.ndarray, *, decline: np.ndarray, review: np.ndarray, approve: np.ndarray
) -> np.ndarray:
    """Final decision ``<U7 [n]`` from the model's and the active hits of each action (bool [n])."""
    level = np.zeros(len(model), dtype=np.int8)
    level[model == "review"] = 1
    level[model == "decline"] = 2
    level = np.where(review, np.maximum(level, 1), level)
    level = np.where(approve & ~review, 0, level)
    level = np.where(approve & review, 1, level)
    level = np.where(decline, 2, level)
    return _NAMES[level]


@dataclass(frozen=True)
class Policy:
    """The decisions of a batch once the rules are applied.

    ``decision`` and ``shadow_decision`` (the decision had the shadow rules been
    active): ``<U7 [n]``; ``decided_by[i]``: the rule id that set row ``i``'s decision,
    or ``"model"``.
    """

    decision: np.ndarray
    shadow_decision: np.ndarray
    decided_by: list[str]


def apply(outcome: Outcome) -> Policy:
    """The decision policy over a batch's rule hits (see the module docstring)."""
    masks, model = outcome.masks, outcome.model_decision
    decision = combine(model, decline=masks[("decline", "active")],
                       review=masks[("review", "active")],
                       approve=masks[("approve", "active")])
    shadow = combine(
        model,
        decline=masks[("decline", "active")] | masks[("decline", "shadow")],
        review=masks[("review", "active")] | masks[("review", "shadow")],
        approve=masks[("approve", "active")] | masks[("approve", "shadow")],
    )
    decided_by = ["model"] * len(model)
    for i, hits in enumerate(outcome.hits):
        if hits:
            final = decision[i]
            decided_by[i] = next((h.rule_id for h in hits if h.mode == "active"
                                  and h.action == final), "model")
    return Policy(decision, shadow, decided_by)
