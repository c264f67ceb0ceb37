"""Score a file of transactions offline: the stream's feature path, model, thresholds and reasons.

``python -m training.score_file --data transactions.parquet --out verdicts.parquet``
(``just score-file DATA=FILE [OUT=FILE]``) reads a file in the bring-your-own history format
(:mod:`training.history`; ``is_fraud``/``label_time`` are optional here: without
them no label feeds the label-based merchant features, as in a stream without a
``labels`` topic), replays it through ``state`` for point-in-time features
(:func:`training.features.point_in_time_features`), scores it with the published
model (default ``models/current``, checked and probed by :func:`export.model.load_model`),
decides at the model's thresholds and explains review/decline verdicts with
:class:`export.reasons.ReasonExplainer`, exactly as the flow does.

Output (Parquet, or CSV when ``--out`` ends with ``.csv``), one row per transaction,
in event-time order: ``transaction_id, card_id, merchant_id, event_time`` (epoch ms),
``score`` (float32 fraud probability), ``decision`` (approve/review/decline),
``model_version``, ``feature_spec_version``, ``reasons`` (Parquet: list of
``{feature, text}``; CSV: JSON text), ``reason_features`` (comma-separated),
``amount_reference`` (float64, reference currency; NaN when no rate converted it),
``amount_unrated`` and ``rate_table``, as the flow's verdict (``--rates-file`` as
``FRAUD_RATES_FILE``).
Exit codes: 0 written, 1 model refused, 2 bad input.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from topics.errors import FraudStreamError

BATCH = 50_000


def _with_labels_column(path: Path) -> tuple[Path | IO[bytes], str | None]:
    """``path``, or an in-memory copy with ``is_fraud = false`` when it has no label column."""
    is_csv = str(path).lower().endswith((".csv", ".csv.gz"))
    if not path.is_file():
        return path, None
    if is_csv:
        import pandas as pd

        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
        if "is_fraud" in df.columns:
            return path, "csv"
        df["is_fraud"] = "false"
        buf = io.BytesIO(df.to_csv(index=False).encode())
        buf.name = str(path)
        return buf, "csv"
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if "is_fraud" in table.column_names:
        return path, "parquet"
    table = table.append_column("is_fraud", pa.array(np.zeros(table.num_rows, dtype=bool)))
    out = io.BytesIO()
    pq.write_table(table, out)
    out.seek(0)
    out.name = str(path)
    return out, "parquet"


def score_history(history: Any, model: Any, max_reasons: int = 3,
                  progress: Any = None, rates_file: Path | None = None) -> dict[str, Any]:
    """Columns of the verdicts of every transaction of ``history`` (see module docstring).

    Amounts convert as in the flow: the model's rate table, then ``rates_file`` (the
    operator's rates, :func:`topics.currency.load_rates_file`), then the committed
    table; a row no rate converts is scored with neutral amount features, flagged
    ``amount_unrated`` and given the same first model reason as in its verdict.
    Raises :class:`topics.currency.RateTableError` for a bad rates file.
    """
    from flows.serving import model_rates
    from scoring.reasons import ReasonExplainer
    from scoring.render import unrated_reasons
    from topics.currency import load_rates_file, reference_amount, serving_rates
    from training.features import point_in_time_features

    rates = serving_rates(model_rates(model),
                          load_rates_file(rates_file) if rates_file is not None else None)
    X = point_in_time_features(history, progress, reference_currency=rates.reference,
                               rates=rates)
    scores = np.concatenate([model.predict(X[i:i + BATCH]) for i in range(0, len(X), BATCH)]) \
        if len(X) else np.zeros(0, np.float32)
    decisions = model.decide(scores)
    flagged = np.flatnonzero(decisions != "approve")
    reasons: list[list[Any]] = [[] for _ in range(len(X))]
    if flagged.size and max_reasons > 0:
        explainer = ReasonExplainer(model, max_reasons)
        for i, codes in zip(flagged.tolist(), explainer.explain(X[flagged], scores[flagged]),
                            strict=True):
            reasons[i] = codes
    txns = history.transactions
    amounts = np.fromiter((reference_amount(t, rates) for t in txns), np.float64, len(txns))
    unrated = np.isnan(amounts)
    for i in np.flatnonzero(unrated).tolist():
        reasons[i] = unrated_reasons(txns[i], reasons[i], rates.reference, rates.version)
    return {
        "transaction_id": [t.transaction_id for t in txns],
        "card_id": [t.card_id for t in txns],
        "merchant_id": [t.merchant_id for t in txns],
        "event_time": np.asarray([t.event_time for t in txns], dtype=np.int64),
        "score": scores.astype(np.float32),
        "decision": decisions.tolist(),
        "model_version": [model.version] * len(txns),
        "feature_spec_version": [model.feature_spec_version] * len(txns),
        "reasons": [[{"feature": r.feature, "text": r.text} for r in rs] for rs in reasons],
        "reason_features": [",".join(r.feature for r in rs) for rs in reasons],
        "amount_reference": amounts,
        "amount_unrated": unrated.tolist(),
        "rate_table": [rates.version] * len(txns),
    }


def write_verdicts(columns: dict[str, Any], out: Path) -> None:
    """Parquet, or CSV (reasons as JSON text) when ``out`` ends with ``.csv``.

    CSV text cells that a spreadsheet would run as a formula get a ``'`` in front
    (:mod:`topics.csvsafe`).
    """
    import pyarrow as pa

    out.parent.mkdir(parents=True, exist_ok=True)
    if str(out).lower().endswith(".csv"):
        import pandas as pd

        from topics.csvsafe import neutralise_frame

        frame = pd.DataFrame({**columns, "reasons": [json.dumps(r) for r in columns["reasons"]]})
        neutralise_frame(frame).to_csv(out, index=False)
        return
    import pyarrow.parquet as pq

    reason = pa.struct([("feature", pa.string()), ("text", pa.string())])
    table = pa.table({
        **{k: v for k, v in columns.items() if k != "reasons"},
        "reasons": pa.array(columns["reasons"], pa.list_(reason)),
    })
    pq.write_table(table, out)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (see module docstring)."""
    from rich.console import Console

    p = argparse.ArgumentParser(prog="python -m training.score_file", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="transactions (.parquet or .csv)")
    p.add_argument("--out", type=Path, default=None,
                   help="verdicts file (.parquet, or .csv for CSV; default: "
                        "<data>.verdicts.parquet beside the data)")
    p.add_argument("--model", type=Path, default=Path("models/current"),
                   help="model file or directory (default models/current)")
    p.add_argument("--reasons", type=int, default=3, choices=range(0, 6), metavar="N",
                   help="reason codes per review/decline verdict, 0-5 (default 3, as the flow)")
    p.add_argument("--rates-file", type=Path, default=None,
                   help="the operator's rates of the day (JSON, as FRAUD_RATES_FILE) for "
                        "currencies the model's rate table lacks")
    p.add_argument("--label-delay-days", type=float, default=7.0,
                   help="label_time of labelled rows without one: event_time + this (default 7)")
    args = p.parse_args(argv)
    console = Console(stderr=True)
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        console.print(f"[score-file {time.perf_counter() - t0:5.1f}s] {msg}", highlight=False,
                      markup=False, soft_wrap=True)

    from export.model import load_model
    from topics.currency import RateTableError
    from training.history import HistoryError, load_history

    try:
        model = load_model(args.model)
    except FraudStreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    say(f"model {model.version} ({len(model.feature_names)} features, review >= "
        f"{model.thresholds.review:.4f}, decline >= {model.thresholds.decline:.4f})")
    try:
        source, fmt = _with_labels_column(args.data)
        history = load_history(source, fmt=fmt, label_delay_days=args.label_delay_days)
    except HistoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    say(f"{len(history):,} transactions; replaying through state for point-in-time features")
    try:
        columns = score_history(history, model, args.reasons,
                                lambda n: say(f"  replayed {n:,} transactions"), args.rates_file)
    except RateTableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out is None:
        args.out = args.data.with_name(f"{args.data.stem}.verdicts.parquet")
    write_verdicts(columns, args.out)
    decisions = columns["decision"]
    counts = {d: decisions.count(d) for d in ("approve", "review", "decline")}
    say(f"wrote {len(decisions):,} verdicts to {args.out}: " + ", ".join(
        f"{k} {v:,}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
