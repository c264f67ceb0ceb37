"""Seeded stream of plausible card transactions for demos and broker tests.

A thin wrapper over the fraud simulator's world (:func:`training.simulate.transaction_stream`),
so there is one generator: the same cards, merchants, currencies (0-, 2- and
3-decimal), cardholder billing fields and zero-value verifications, as an
endless stream of valid ``Transaction`` records with strictly increasing event
times, unique ids ``tx-<seed>-<n>`` and optional fields sometimes missing on
purpose. No fraud scenarios and no labels: for those, simulate a history with
``python -m training.simulate`` and replay it with ``python -m topics.produce --file``.

>>> txns = list(synthetic_transactions(3, seed=7, cards=10, start_ms=1_700_000_000_000))
>>> [t.transaction_id for t in txns]
['tx-7-000000000', 'tx-7-000000001', 'tx-7-000000002']
>>> txns[0].event_time > 1_700_000_000_000 and txns[0].event_time < txns[1].event_time
True
"""

from __future__ import annotations

from training.simulate import transaction_stream as synthetic_transactions

__all__ = ["synthetic_transactions"]
