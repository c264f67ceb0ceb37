r"""Bring your own labelled history: file format, validating loader, time-ordered event stream.

Format (Parquet or CSV, one row per transaction, header row in CSV):

- the ``transactions`` contract columns (:class:`topics.contracts.Transaction`):
  required ``transaction_id, card_id, merchant_id, amount, currency, event_time``;
  optional ``mcc, channel, entry_mode, country, lat, lon, device_id, ip,
  customer_id`` (empty cell or null = absent). The contract's rules apply
  unchanged (amount > 0, ISO 4217 currency, ISO 3166 country, ...): rows are
  checked by :class:`topics.validation.TransactionDecoder`.
- ``is_fraud`` (required): boolean; CSV accepts ``true/false``, ``1/0``, ``yes/no``.
- ``label_time`` (optional): when the label became known. Empty means
  ``event_time`` + ``label_delay_days`` (default 7). Must not precede ``event_time``.
- ``scenario`` (optional): free text, e.g. the simulator's fraud scenario; used
  by the evaluation report only. Other columns are ignored.

Times are UTC epoch milliseconds (integers) or RFC 3339 strings with an offset
(``2025-01-06T08:30:00Z``); Parquet timestamp columns with a time zone also work.
Errors name the file, the CSV line number (header = line 1) or the 1-based
Parquet data row, the column and the rule, e.g.
``history.csv: line 4: amount: expected `float` > 0.0``.

The event stream (:func:`events`) yields transactions at ``event_time`` and
fraud labels at ``label_time`` in time order (a transaction before a label at
the same millisecond); legitimate rows produce labels only with
``legit_labels=True``: a transaction without a fraud label is legitimate so far.

>>> import io
>>> csv = io.BytesIO(b"transaction_id,card_id,merchant_id,amount,currency,event_time,is_fraud\n"
...                  b"t1,c1,m1,12.5,EUR,2025-01-06T08:00:00Z,true\n")
>>> h = load_history(csv, fmt="csv")
>>> [type(e).__name__ for e in events(h)]
['Transaction', 'Label']
>>> bad = io.BytesIO(b"transaction_id,card_id,merchant_id,amount,currency,event_time,is_fraud\n"
...                  b"t1,c1,m1,0,EUR,1736150400000,no\n")
>>> load_history(bad, fmt="csv")
Traceback (most recent call last):
...
training.history.HistoryError: <stream>: 1 problem(s):
  line 2: amount: expected `float` > 0.0
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgspec
import numpy as np
import pandas as pd

from topics.contracts import Label, Transaction
from topics.errors import FraudStreamError
from topics.validation import Rejection, TransactionDecoder, parse_time_ms

DAY_MS = 86_400_000
REQUIRED = ("transaction_id", "card_id", "merchant_id", "amount", "currency", "event_time")
OPTIONAL = ("mcc", "channel", "entry_mode", "country", "lat", "lon", "device_id", "ip",
            "customer_id")
TXN_COLUMNS = REQUIRED + OPTIONAL
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}
_NUMERIC = ("amount", "lat", "lon")


class HistoryError(FraudStreamError):
    """A history file is unusable; the message lists each problem with its line/row and column."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        more = "" if len(problems) < MAX_PROBLEMS else f" (stopped after {MAX_PROBLEMS})"
        super().__init__(
            f"{source}: {len(problems)} problem(s){more}:\n  " + "\n  ".join(problems)
        )


MAX_PROBLEMS = 20


@dataclass
class History:
    """A validated labelled history, sorted by ``event_time`` (stable)."""

    transactions: list[Transaction]
    is_fraud: np.ndarray  # bool
    label_time: np.ndarray  # int64 epoch ms
    scenario: list[str | None]

    def __len__(self) -> int:
        return len(self.transactions)

    @property
    def event_time(self) -> np.ndarray:
        """Event times (int64 ms)."""
        return np.fromiter((t.event_time for t in self.transactions), np.int64, len(self))

    @property
    def card_id(self) -> np.ndarray:
        """Card ids (object array)."""
        return np.array([t.card_id for t in self.transactions], dtype=object)


def _present(v: Any) -> bool:
    if v is None or v is pd.NA:
        return False
    if isinstance(v, float) and math.isnan(v):
        return False
    return not (isinstance(v, str) and v == "")


def _bool(v: Any) -> bool | None:
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, int | np.integer) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    return None


def _read(path: str | Path | IO[bytes], fmt: str | None) -> tuple[dict[str, list[Any]], str, bool]:
    """Columns as Python lists, a display name, and whether rows are CSV lines."""
    source = str(path) if isinstance(path, str | Path) else getattr(path, "name", "<stream>")
    if not isinstance(source, str):
        source = "<stream>"
    kind = fmt or ("csv" if str(source).lower().endswith((".csv", ".csv.gz")) else "parquet")
    if isinstance(path, str | Path) and not Path(path).is_file():
        raise HistoryError(source, [
            "no such file; simulate one with `just simulate` or point DATA at your history "
            "(Parquet or CSV, format in training/history.py)"
        ])
    if kind == "csv":
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
        except Exception as exc:
            raise HistoryError(source, [f"cannot read as CSV: {exc}"]) from exc
        return {c: df[c].tolist() for c in df.columns}, source, True
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise HistoryError(source, [f"cannot read as Parquet: {exc}"]) from exc
    cols: dict[str, list[Any]] = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_timestamp(col.type):
            if col.type.tz is None:
                raise HistoryError(source, [
                    f"column `{name}`: timestamp without time zone; store UTC (tz='UTC') "
                    "or epoch milliseconds"])
            col = col.cast(pa.timestamp("ms", "UTC")).cast(pa.int64())
        cols[name] = col.to_pylist()
    return cols, source, False


def load_history(
    path: str | Path | IO[bytes],
    fmt: str | None = None,
    label_delay_days: float = 7.0,
    now_ms: int | None = None,
) -> History:
    """Read and validate a history file (``fmt`` ``"csv"``/``"parquet"``; default from suffix).

    Raises :class:`HistoryError` listing up to :data:`MAX_PROBLEMS` problems.
    """
    cols, source, is_csv = _read(path, fmt)
    missing = [c for c in (*REQUIRED, "is_fraud") if c not in cols]
    if missing:
        raise HistoryError(source, [
            f"missing required column `{c}` (found: {', '.join(cols) or 'none'})" for c in missing
        ])
    n = len(cols["transaction_id"])
    now = int(time.time() * 1000) if now_ms is None else now_ms
    decoder = TransactionDecoder()
    encode = msgspec.json.encode
    present_cols = [c for c in TXN_COLUMNS if c in cols]
    label_col = cols.get("label_time")
    scen_col = cols.get("scenario")
    delay = int(label_delay_days * DAY_MS)
    txns: list[Transaction] = []
    fraud = np.zeros(n, dtype=bool)
    label_time = np.zeros(n, dtype=np.int64)
    problems: list[str] = []
    seen: dict[str, int] = {}

    for i in range(n):
        where = f"line {i + 2}" if is_csv else f"row {i + 1}"
        row: dict[str, Any] = {}
        bad = False
        for c in present_cols:
            v = cols[c][i]
            if not _present(v):
                continue
            if is_csv:
                if c in _NUMERIC:
                    try:
                        v = float(v)
                    except ValueError:
                        problems.append(f"{where}: {c}: {v[:40]!r} is not a number")
                        bad = True
                        continue
                elif c == "event_time" and v.strip().lstrip("-").isdigit():
                    v = int(v)
            row[c] = v
        flag = _bool(cols["is_fraud"][i])
        if flag is None:
            problems.append(
                f"{where}: is_fraud: {str(cols['is_fraud'][i])[:40]!r} is not a boolean "
                "(true/false, 1/0, yes/no)")
            bad = True
        if not bad:
            try:
                result = decoder.decode(encode(row), now)
            except (TypeError, OverflowError) as exc:  # e.g. a float NaN or a non-JSON value
                result = Rejection("wrong_type", f"unencodable value ({exc})")
            if isinstance(result, Rejection):
                problems.append(f"{where}: {result.reason}")
                bad = True
        if not bad:
            assert isinstance(result, Transaction)
            lt_raw = label_col[i] if label_col is not None else None
            if _present(lt_raw):
                try:
                    if is_csv and isinstance(lt_raw, str) and lt_raw.strip().isdigit():
                        lt_raw = int(lt_raw)
                    lt = parse_time_ms("label_time", lt_raw)
                except ValueError as exc:
                    problems.append(f"{where}: {exc}")
                    bad = True
                    lt = 0
                if not bad and lt < result.event_time:
                    problems.append(f"{where}: label_time: {lt} is before event_time "
                                    f"{result.event_time}")
                    bad = True
            else:
                lt = result.event_time + delay
            first = seen.setdefault(result.transaction_id, i)
            if first != i:
                other = f"line {first + 2}" if is_csv else f"row {first + 1}"
                problems.append(f"{where}: transaction_id: {result.transaction_id!r} repeats "
                                f"{other}")
                bad = True
        if bad:
            if len(problems) >= MAX_PROBLEMS:
                break
            continue
        assert isinstance(result, Transaction)
        txns.append(result)
        fraud[len(txns) - 1] = bool(flag)
        label_time[len(txns) - 1] = lt
    if problems:
        raise HistoryError(source, problems[:MAX_PROBLEMS])
    scen: list[str | None] = (
        [str(s) if _present(s) else None for s in scen_col] if scen_col else [None] * n
    )
    return _sorted(txns, fraud, label_time, scen)


def _sorted(txns: list[Transaction], fraud: np.ndarray, label_time: np.ndarray,
            scen: list[str | None]) -> History:
    et = np.fromiter((t.event_time for t in txns), np.int64, len(txns))
    order = np.argsort(et, kind="stable")
    return History([txns[i] for i in order], fraud[order], label_time[order],
                   [scen[i] for i in order])


def from_frame(df: pd.DataFrame) -> History:
    """Trusted in-memory history (the simulator's frame) without per-row validation."""
    cols = [c for c in TXN_COLUMNS if c in df.columns]
    data = {c: df[c].tolist() for c in cols}
    txns = []
    for i in range(len(df)):
        kw = {c: data[c][i] for c in cols if _present(data[c][i])}
        txns.append(Transaction(**kw))
    scen = df["scenario"].tolist() if "scenario" in df.columns else [None] * len(df)
    return _sorted(txns, df["is_fraud"].to_numpy(bool), df["label_time"].to_numpy(np.int64),
                   [s if _present(s) else None for s in scen])


def write_history(df: pd.DataFrame, path: Path) -> None:
    """Write a history frame as Parquet, or CSV when ``path`` ends with ``.csv``."""
    if str(path).lower().endswith(".csv"):
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)


def labels(history: History, legit_labels: bool = False) -> Iterator[Label]:
    """Labels ordered by ``label_time`` (fraud only unless ``legit_labels``)."""
    idx = np.flatnonzero(history.is_fraud | legit_labels)
    for i in idx[np.argsort(history.label_time[idx], kind="stable")]:
        t = history.transactions[i]
        fraud = bool(history.is_fraud[i])
        yield Label(transaction_id=t.transaction_id, card_id=t.card_id,
                    merchant_id=t.merchant_id, is_fraud=fraud,
                    label_time=int(history.label_time[i]),
                    source="chargeback" if fraud else "other")


def events(history: History, legit_labels: bool = False) -> Iterator[Transaction | Label]:
    """Transactions at ``event_time`` and labels at ``label_time``, merged in time order."""
    txns = ((t.event_time, 0, t) for t in history.transactions)
    labs = ((lab.label_time, 1, lab) for lab in labels(history, legit_labels))
    merged: Iterator[tuple[int, int, Transaction | Label]] = heapq.merge(
        txns, labs, key=lambda e: (e[0], e[1])
    )
    for _, _, ev in merged:
        yield ev
