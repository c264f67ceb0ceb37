"""Point-in-time features for a history, computed only by replaying it through ``state``.

Training never computes a feature itself: it feeds the time-ordered event
stream of :func:`training.history.events` (transactions at ``event_time``,
fraud labels at ``label_time``) to :func:`state.replay.replay`, which yields each
transaction's float32 vector as of just before it, the same code path as the
streaming flow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from topics.currency import RateTable
from topics.errors import FraudStreamError
from training.history import History, events


class FeatureReplayError(FraudStreamError):
    """``state.replay`` did not return one vector per transaction of the history."""


def feature_spec() -> tuple[str, tuple[str, ...]]:
    """``(FEATURE_SPEC_VERSION, FEATURE_NAMES)`` of the running ``state`` code."""
    from state.spec import FEATURE_NAMES, FEATURE_SPEC_VERSION

    return str(FEATURE_SPEC_VERSION), tuple(FEATURE_NAMES)


def feature_context(reference_currency: str = "EUR") -> dict[str, Any]:
    """What besides the feature spec a model's features depend on, recorded in its metadata.

    A JSON-ready dict: the feature spec version, the reference currency every amount
    feature is in, and the rate table that converts to it (version and rates). The
    flow computes amounts with the champion's context and refuses a model whose
    context differs from the one the running state was built with.
    """
    from state.spec import FEATURE_SPEC_VERSION
    from topics.currency import default_rates

    rates = default_rates(reference_currency)
    return {
        "feature_spec_version": str(FEATURE_SPEC_VERSION),
        "reference_currency": rates.reference,
        "rate_table": rates.to_dict(),
    }


def point_in_time_features(
    history: History,
    progress: Callable[[int], None] | None = None,
    every: int = 100_000,
    reference_currency: str = "EUR",
    rates: RateTable | None = None,
) -> np.ndarray:
    """Float32 ``[len(history), F]`` matrix, row ``i`` for ``history.transactions[i]``.

    Amount features are in ``reference_currency`` converted with the code's rate
    table, or with ``rates`` when given (``score-file`` passes the flow's serving
    table, :func:`topics.currency.serving_rates`); an amount no rate converts gets
    the neutral amount features, as in the stream (:mod:`state.inputs`). Merchant
    features are over all traffic, as the stream's merchant stage computes them.
    Raises :class:`FeatureReplayError` if the history repeats a transaction id (load
    it with :func:`training.history.load_history`, which de-duplicates).
    """
    from state.replay import ReplayStats, reference_amounts, replay_matrix
    from topics.currency import reference_amount

    stats = ReplayStats()
    amount_of = (reference_amounts(reference_currency) if rates is None
                 else (lambda txn: reference_amount(txn, rates)))
    txns, matrix = replay_matrix(events(history), amount_of=amount_of, stats=stats)
    n = len(history)
    if stats.repeats or stats.conflicts or len(txns) != n:
        raise FeatureReplayError(
            f"replay returned {len(txns)} rows for {n} transactions ({stats.repeats} repeated "
            f"and {stats.conflicts} conflicting ids); de-duplicate the history first "
            "(training.history.load_history does)"
        )
    if progress is not None:
        progress(n)
    index = {t.transaction_id: i for i, t in enumerate(history.transactions)}
    order = np.fromiter((index[t.transaction_id] for t in txns), np.int64, n)
    out = np.empty_like(matrix)
    out[order] = matrix
    return out
