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
    """The stream's state path on fresh stores, µs/txn: card store then merchant store.

    ``CardStore.process`` then ``MerchantStore.process`` per batch (columns built from
    the transactions, RocksDB multi-gets, idempotency records, the card and merchant
    kernels, one ``WriteBatch`` each), verdict bytes rendered as the feature row's
    bytes (the model and verdict encoding are measured apart).
    """
    from state.card_store import CardBatch, CardStore
    from state.db import StoreIdentity
    from state.inputs import FeatureInputs
    from state.merchant_store import MerchantBatch, MerchantStore, Rendered
    from state.options import StoreOptions
    from state.records import body_digest
    from state.replay import reference_amounts

    amount_of = reference_amounts()
    amounts = np.array([amount_of(t) for t in sample])
    bodies = np.array([body_digest(t) for t in sample], dtype=np.uint64)

    gist = b'{"score":0.012345678,"decision":"approve","model_version":"v20261207-0000"}'

    def render(_index: object, rows: np.ndarray) -> Rendered:
        # verdicts as the rows' bytes, the gists as the flow hands them (scoring.render.gists)
        return Rendered([row.tobytes() for row in rows], [gist] * len(rows))

    timings = []
    for _ in range(runs):
        tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
        options = StoreOptions()
        cards = CardStore.open(tmp, StoreIdentity("cards", 0, 1, "bench", "id"), options)
        merchants = MerchantStore.open(tmp, StoreIdentity("merchants", 0, 1, "bench", "id"),
                                       options)
        start = time.perf_counter()
        for i in range(0, len(sample), batch):
            chunk = sample[i:i + batch]
            n = len(chunk)
            tids = [t.transaction_id for t in chunk]
            inputs = FeatureInputs.of(chunk, amounts[i:i + n])
            part = np.zeros(n, dtype=np.int32)
            offset = np.arange(i, i + n, dtype=np.int64)
            out = cards.process(CardBatch(tids, [t.card_id for t in chunk], bodies[i:i + n],
                                          part, offset, inputs))
            merchants.process(MerchantBatch(tids, [t.merchant_id for t in chunk],
                                            bodies[i:i + n], part, offset, inputs, out.rows,
                                            out.has_row), render)
        timings.append(time.perf_counter() - start)
        cards.close()
        merchants.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return round(statistics.median(timings) / len(sample) * 1e6, 2)


def components(txns: list[Transaction], model_path: Path, n_state: int,
               runs: int) -> dict[str, Any]:
    """Median of ``runs`` timings of each component; the state ones on ``n_state`` txns."""
    from export.model import load_model
    from scoring.reasons import ReasonExplainer
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
