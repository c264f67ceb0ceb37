"""Point-in-time features for a history, computed only by replaying it through ``state``.

Training never computes a feature itself: it feeds the time-ordered event
stream of :func:`training.history.events` (transactions at ``event_time``,
fraud labels at ``label_time``) to :func:`state.replay.replay`, which yields each
transaction's float32 vector as of just before it, the same code path as the
streaming flow.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from topics.errors import FraudStreamError
from training.history import History, events


class FeatureReplayError(FraudStreamError):
    """``state.replay`` did not return one vector per transaction of the history."""


def feature_spec() -> tuple[str, tuple[str, ...]]:
    """``(FEATURE_SPEC_VERSION, FEATURE_NAMES)`` of the running ``state`` code."""
    from state.spec import FEATURE_NAMES, FEATURE_SPEC_VERSION

    return str(FEATURE_SPEC_VERSION), tuple(FEATURE_NAMES)


def point_in_time_features(
    history: History,
    progress: Callable[[int], None] | None = None,
    every: int = 100_000,
    n_partitions: int | None = None,
) -> np.ndarray:
    """Float32 ``[len(history), F]`` matrix, row ``i`` for ``history.transactions[i]``.

    Merchant state is per input partition in the stream, so the replay uses the
    ``transactions`` topic's partition count unless ``n_partitions`` is given.
    """
    from state.replay import replay
    from topics.registry import TOPICS

    parts = n_partitions or TOPICS["transactions"].partitions

    _, names = feature_spec()
    n = len(history)
    out = np.empty((n, len(names)), dtype=np.float32)
    index = {t.transaction_id: i for i, t in enumerate(history.transactions)}
    filled = np.zeros(n, dtype=bool)
    for done, (txn, vec) in enumerate(replay(events(history), n_partitions=parts), 1):
        i = index.get(txn.transaction_id)
        if i is None:
            raise FeatureReplayError(f"replay yielded unknown transaction {txn.transaction_id!r}")
        out[i] = vec
        filled[i] = True
        if progress is not None and done % every == 0:
            progress(done)
    if not filled.all():
        missing = history.transactions[int(np.flatnonzero(~filled)[0])].transaction_id
        raise FeatureReplayError(
            f"replay returned {int(filled.sum())} of {n} vectors (first missing: {missing!r})"
        )
    return out
