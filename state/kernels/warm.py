"""Compile every numba kernel of the flow into numba's cache ahead of time.

    python -m state.kernels.warm [--transactions 3000]

The kernels (:mod:`state.kernels`, :mod:`state.partitioning`) are ``@njit(cache=True)``:
the first process to call one compiles it (seconds per kernel, about 40 s for all of
them on a 2-core machine) and writes it to ``NUMBA_CACHE_DIR`` (or ``__pycache__``);
later processes load it in milliseconds. A pod on a fresh volume would pay the
compilation before its first verdict. The image runs this module at build time into
``/opt/numba-cache`` and ``docker/fraud-flow.sh`` seeds an empty ``NUMBA_CACHE_DIR``
from it. numba checks each cached kernel against its source file's time stamp and the
CPU it was compiled for, so a copied cache that does not fit is recompiled, never
misused.

It runs the offline replay (:func:`state.replay.replay_matrix`, the stores' own
feature kernels) over a small simulated history with labels, and the murmur2
partitioner.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def warm(transactions: int = 3000) -> float:
    """Call every kernel once with the flow's argument types; returns the seconds it took."""
    from state.partitioning import murmur2_partitions
    from state.replay import replay_matrix
    from training.history import events
    from training.simulate import SimConfig, simulated_history

    started = time.perf_counter()
    history = simulated_history(SimConfig(n_transactions=transactions, n_cards=200, days=20,
                                          seed=1, fraud_rate=0.05))
    replay_matrix(events(history))
    murmur2_partitions([t.card_id for t in history.transactions[:100]], 8)
    return time.perf_counter() - started


def load() -> float:
    """Load every kernel the scoring flow calls, now: one tiny call each; returns seconds.

    The first call of a cached kernel in a process still costs about 0.4 s (numba's
    start, then the cache read; compiling when the cache misses). The flow calls this
    while it builds, before it reads a record, so the first batch does not wait for it.
    """
    from state.features import MerchantOps, card_features, context_features, merchant_features
    from state.inputs import FeatureInputs
    from state.partitioning import murmur2_partitions
    from topics.contracts import Transaction

    started = time.perf_counter()
    murmur2_partitions(["card"], 2)
    inputs = FeatureInputs.of([Transaction(
        transaction_id="t", card_id="c", merchant_id="m", amount=1.0, currency="EUR",
        event_time=1_700_000_000_000)], [1.0])
    card_features([None], np.zeros(1, dtype=np.int64), inputs)
    ops = MerchantOps()
    ops.txns(np.zeros(1, dtype=np.int64), inputs.event_ms, np.zeros(1, dtype=np.int64))
    merchant_features([None], ops, 1)
    context_features(inputs)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Warm the cache; print what it took."""
    parser = argparse.ArgumentParser(prog="python -m state.kernels.warm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=3000)
    args = parser.parse_args(argv)
    print(f"numba kernels compiled and cached in {warm(args.transactions):.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
