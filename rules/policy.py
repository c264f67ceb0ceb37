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
id; the decision's author (``decided_by``) is the first active hit whose action
is the final decision, else ``model``.

>>> import numpy as np
>>> model = np.array(["decline", "decline", "approve", "review"])
>>> combine(model, decline=np.array([0, 0, 0, 1], bool), review=np.array([0, 1, 1, 0], bool),
...         approve=np.array([1, 1, 0, 1], bool)).tolist()
['approve', 'review', 'review', 'decline']
"""

from __future__ import annotations

import numpy as np

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
