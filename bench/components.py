"""Components in process, one core: decode + validate, state step, ONNX per row, reason codes."""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from topics.contracts import Transaction

_encode = msgspec.json.Encoder().encode


def _median_time(fn: Callable[[], Any], runs: int) -> float:
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def _store_us_per_txn(sample: list[Transaction], batch: int, runs: int) -> float:
    """RocksDB streaming path (``PartitionStore.process_batch``) on a fresh store, µs/txn."""
    from state.options import StoreOptions
    from state.store import PartitionStore

    timings = []
    items = list(enumerate(sample))
    for _ in range(runs):
        tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
        store = PartitionStore.open(tmp, 0, StoreOptions())
        start = time.perf_counter()
        for i in range(0, len(items), batch):
            store.process_batch(items[i:i + batch])
        timings.append(time.perf_counter() - start)
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return round(statistics.median(timings) / len(sample) * 1e6, 2)


def components(txns: list[Transaction], model_path: Path, n_state: int,
               runs: int) -> dict[str, Any]:
    """Median of ``runs`` timings of each component; the state ones on ``n_state`` txns."""
    from export.model import load_model
    from export.reasons import ReasonExplainer
    from state.replay import replay_matrix
    from topics.validation import TransactionDecoder

    out: dict[str, Any] = {}
    decoder = TransactionDecoder()
    raw = [_encode(t) for t in txns[:50_000]]
    now_ms = int(time.time() * 1000)
    t = _median_time(lambda: [decoder.decode(m, now_ms) for m in raw], runs)
    out["decode_validate_us_per_msg"] = round(t / len(raw) * 1e6, 2)

    sample = txns[:n_state]
    t = _median_time(lambda: replay_matrix(sample), runs)
    out["replay_us_per_txn"] = round(t / len(sample) * 1e6, 2)
    _, features = replay_matrix(sample)
    out["store_us_per_txn_batch1"] = _store_us_per_txn(sample[:2_000], 1, runs)
    for batch in (64, 512):
        out[f"store_us_per_txn_batch{batch}"] = _store_us_per_txn(sample, batch, runs)
    out["state_transactions"] = len(sample)

    model = load_model(model_path)
    for size in (1, 64, 512):
        rows, reps = features[:size], max(20, 20_000 // size)

        def predict(rows: np.ndarray = rows, reps: int = reps) -> None:
            for _ in range(reps):
                model.predict(rows)

        out[f"onnx_us_per_row_batch{size}"] = round(_median_time(predict, runs) / reps / size
                                                    * 1e6, 2)
    scores = model.predict(features)
    top = np.argsort(scores)[-256:]
    explainer = ReasonExplainer(model, max_reasons=3)
    rows, s = features[top], scores[top]
    t = _median_time(lambda: explainer.explain(rows, s), runs)
    out["reasons_us_per_flagged_verdict_batch256"] = round(t / len(top) * 1e6, 2)
    one_row, one_score = features[top[-1:]], scores[top[-1:]]
    t = _median_time(lambda: [explainer.explain(one_row, one_score) for _ in range(200)], runs)
    out["reasons_us_per_flagged_verdict_batch1"] = round(t / 200 * 1e6, 2)
    return out
