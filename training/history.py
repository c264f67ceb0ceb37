r"""Bring your own labelled history: file format, validating loader, time-ordered event stream.

Format (Parquet or CSV, one row per transaction, header row in CSV):

- the ``transactions`` contract columns (:class:`topics.contracts.Transaction`):
  required ``transaction_id, card_id, merchant_id, amount, currency, event_time``;
  optional ``mcc, channel, entry_mode, country, lat, lon, device_id, ip,
  customer_id`` and, when the contract has them, ``billing_amount, billing_currency``
  (the cardholder billing amount and currency, ISO 8583 DE6 / DE51); empty cell or
  null = absent. The contract's rules apply unchanged (amount limits, ISO 4217
  currency, ISO 3166 country, ...): rows are checked by
  :class:`topics.validation.TransactionDecoder`.
- ``is_fraud`` (required): boolean; CSV accepts ``true/false``, ``1/0``, ``yes/no``.
- ``label_time`` (optional): when the label became known. Empty means
  ``event_time`` + ``label_delay_days`` (default 7). Must not precede ``event_time``.
- ``ingest_time`` (optional): when the stream saw the transaction (the Kafka record
  timestamp). A row with one is validated against it exactly as the stream validates
  the record (event time plausibility is judged against the record timestamp); it is
  kept on :attr:`History.ingest_time` (an empty cell gets the row's ``event_time``).
- ``scenario`` (optional): free text, e.g. the simulator's fraud scenario; used
  by the evaluation report only. Other columns are ignored.

Times are UTC epoch milliseconds (integers) or RFC 3339 strings with an offset
(``2025-01-06T08:30:00Z``); Parquet timestamp columns with a time zone also work.
Errors name the file, the CSV line number (header = line 1) or the 1-based
Parquet data row, the column and the rule, e.g.
``history.csv: line 4: amount: expected `float` >= 0.0``.

**De-duplication by transaction id, as the stream does it** (idempotency by
transaction id, issue 13): the first row of a transaction id is kept (file order
stands for arrival order); a later row with the same transaction body (equal
:class:`~topics.contracts.Transaction` after validation) and the same label is an
exact repeat: dropped and counted. A later row with a different body is a
``duplicate_conflict`` (the stream dead-letters it); same body but a different
label is a ``label_conflict``. The whole file is one horizon (the stream remembers ids
for its verdict index's horizon, which a history's re-deliveries fall within in
practice). Conflicts refuse the file, or with
``skip_invalid=True`` are skipped like invalid rows: every skipped row is counted
per column and rule and the first :data:`MAX_PROBLEMS` are listed
(:class:`Hygiene`, written into the training report).

The event stream (:func:`events`) yields transactions at ``event_time`` and
fraud labels at ``label_time`` in time order (a transaction before a label at
the same millisecond); legitimate rows produce labels only with
``legit_labels=True``: a transaction without a fraud label is legitimate so far.

>>> import io
>>> head = b"transaction_id,card_id,merchant_id,amount,currency,event_time,is_fraud\n"
>>> csv = io.BytesIO(head + b"t1,c1,m1,12.5,EUR,2025-01-06T08:00:00Z,true\n"
...                  b"t1,c1,m1,12.50,EUR,1736150400000,yes\n")
>>> h = load_history(csv, fmt="csv")
>>> [type(e).__name__ for e in events(h)], h.hygiene.duplicates
(['Transaction', 'Label'], 1)
>>> bad = io.BytesIO(head + b"t1,c1,m1,-1,EUR,1736150400000,no\n")
>>> load_history(bad, fmt="csv")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
training.history.HistoryError: <stream>: 1 problem(s); fix ... or pass --skip-invalid ...:
  line 2: amount: expected `float` >...
"""

from __future__ import annotations

import heapq
import math
import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
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
#: Optional contract columns; ``billing_*`` count only once the contract has them.
BILLING = ("billing_amount", "billing_currency")
_CONTRACT = set(Transaction.__struct_fields__)
OPTIONAL = ("mcc", "channel", "entry_mode", "country", "lat", "lon", "device_id", "ip",
            "customer_id") + tuple(c for c in BILLING if c in _CONTRACT)
TXN_COLUMNS = REQUIRED + OPTIONAL
#: Columns besides the contract's that the loader reads.
EXTRA_COLUMNS = ("is_fraud", "label_time", "ingest_time", "scenario")
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}
_NUMERIC = ("amount", "lat", "lon", "billing_amount")
#: Problems listed in an error or in the report (all are counted).
MAX_PROBLEMS = 20
_COLUMN = re.compile(r"^([A-Za-z_][\w./\[\]]*): ")
_BACKTICK = re.compile(r"`([^`]*)`")


@dataclass(frozen=True)
class Problem:
    """One unusable row: where (``line 4`` / ``row 3``), column, rule and the full message.

    ``rule`` is the :class:`topics.validation.Rejection` error class (the dead-letter
    vocabulary, e.g. ``invalid_value``) or one of the loader's own: ``not_a_number``,
    ``not_a_boolean``, ``bad_label_time``, ``label_before_event``, ``bad_ingest_time``,
    ``duplicate_conflict``, ``label_conflict``.
    """

    where: str
    column: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class Hygiene:
    """What loading did to the rows: kept, exact repeats dropped, skipped (per rule, listed)."""

    source: str
    rows_read: int = 0
    rows_kept: int = 0
    duplicates: int = 0  # exact repeats of a kept transaction id, dropped
    duplicate_examples: list[str] = field(default_factory=list)
    skipped_by_rule: dict[str, int] = field(default_factory=dict)  # "column: rule" -> rows
    skipped_examples: list[Problem] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        """Rows skipped as invalid or conflicting."""
        return sum(self.skipped_by_rule.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (for ``metrics.json``)."""
        return {
            "source": self.source, "rows_read": self.rows_read, "rows_kept": self.rows_kept,
            "duplicates_dropped": self.duplicates,
            "duplicate_examples": list(self.duplicate_examples),
            "skipped": self.skipped, "skipped_by_rule": dict(self.skipped_by_rule),
            "skipped_examples": [
                {"where": p.where, "column": p.column, "rule": p.rule, "message": p.message}
                for p in self.skipped_examples
            ],
        }


class HistoryError(FraudStreamError):
    """A history file is unusable; the message lists each problem with its line/row and column."""

    def __init__(self, source: str, problems: Sequence[str], remedy: str | None = None) -> None:
        self.source = source
        self.problems = list(problems)
        self.remedy = remedy
        more = "" if len(problems) < MAX_PROBLEMS else f" (stopped after {MAX_PROBLEMS})"
        tail = f"; {remedy}" if remedy else ""
        super().__init__(
            f"{source}: {len(problems)} problem(s){more}{tail}:\n  " + "\n  ".join(problems)
        )

    @property
    def headline(self) -> str:
        """One line: the only problem, or the count and the first problem; with the remedy."""
        if not self.problems:
            return self.source
        tail = f"; {self.remedy}" if self.remedy else ""
        if len(self.problems) == 1:
            return f"{self.source}: {self.problems[0]}{tail}"
        return (f"{self.source}: {len(self.problems)} problems, first {self.problems[0]}"
                f"{tail}")


_ROW_REMEDY = ("fix these rows or pass --skip-invalid to skip such rows (counted and listed "
               "in the training report)")


@dataclass
class History:
    """A validated, de-duplicated labelled history, sorted by ``event_time`` (stable)."""

    transactions: list[Transaction]
    is_fraud: np.ndarray  # bool
    label_time: np.ndarray  # int64 epoch ms
    scenario: list[str | None]
    #: Kafka record timestamps (int64 epoch ms) when the file had ``ingest_time``, else None.
    ingest_time: np.ndarray | None = None
    hygiene: Hygiene | None = None

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


def _column_of(reason: str) -> str:
    """The column a :class:`Rejection` reason names (``amount: ...``, ``missing ... `x```)."""
    if reason.startswith("missing required field"):
        found = _BACKTICK.search(reason)
        return found.group(1) if found else ""
    found = _COLUMN.match(reason)
    return found.group(1) if found else ""


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


def _time_cell(raw: Any, is_csv: bool, column: str) -> int:
    """Epoch ms from a CSV/Parquet time cell; ``ValueError`` names the column and rule."""
    if is_csv and isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
        raw = int(raw)
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    return parse_time_ms(column, raw)


class _Collector:
    """Problems of one load: refuse after :data:`MAX_PROBLEMS`, or count and list (skip)."""

    def __init__(self, hygiene: Hygiene, skip: bool) -> None:
        self.hygiene = hygiene
        self.skip = skip
        self.refusals: list[str] = []
        self.by_rule: Counter[str] = Counter()

    def add(self, where: str, rule: str, message: str, column: str | None = None) -> None:
        col = _column_of(message) if column is None else column
        problem = Problem(where, col, rule, message)
        if self.skip:
            self.by_rule[f"{col}: {rule}" if col else rule] += 1
            if len(self.hygiene.skipped_examples) < MAX_PROBLEMS:
                self.hygiene.skipped_examples.append(problem)
        else:
            self.refusals.append(str(problem))

    @property
    def full(self) -> bool:
        return not self.skip and len(self.refusals) >= MAX_PROBLEMS


def load_history(
    path: str | Path | IO[bytes],
    fmt: str | None = None,
    label_delay_days: float = 7.0,
    now_ms: int | None = None,
    *,
    skip_invalid: bool = False,
) -> History:
    """Read, validate and de-duplicate a history file (``fmt`` ``"csv"``/``"parquet"``).

    ``fmt`` defaults from the suffix. ``now_ms`` is the clock rows without an
    ``ingest_time`` are validated against (default: now). Raises
    :class:`HistoryError` listing up to :data:`MAX_PROBLEMS` problems, unless
    ``skip_invalid``: then invalid and conflicting rows are skipped and recorded in
    :attr:`History.hygiene` (a file-level problem, such as a missing column, or a file
    with no usable row, still raises).
    """
    cols, source, is_csv = _read(path, fmt)
    missing = [c for c in (*REQUIRED, "is_fraud") if c not in cols]
    if missing:
        raise HistoryError(source, [
            f"missing required column `{c}` (found: {', '.join(cols) or 'none'})" for c in missing
        ])
    unsupported = [c for c in BILLING if c in cols and c not in _CONTRACT]
    if unsupported and any(_present(v) for c in unsupported for v in cols[c]):
        raise HistoryError(source, [
            f"column `{c}`: this version's transactions contract has no billing fields; "
            "drop the column or upgrade fraudstream" for c in unsupported
        ])
    n = len(cols["transaction_id"])
    hygiene = Hygiene(source=source, rows_read=n)
    problems = _Collector(hygiene, skip_invalid)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    decoder = TransactionDecoder()
    encode = msgspec.json.encode
    present_cols = [c for c in TXN_COLUMNS if c in cols]
    label_col = cols.get("label_time")
    ingest_col = cols.get("ingest_time")
    scen_col = cols.get("scenario")
    delay = int(label_delay_days * DAY_MS)
    txns: list[Transaction] = []
    kept_rows: list[int] = []
    fraud: list[bool] = []
    label_time: list[int] = []
    ingest: list[int] = []
    first_of: dict[str, int] = {}  # transaction id -> index into txns

    def where_of(i: int) -> str:
        return f"line {i + 2}" if is_csv else f"row {i + 1}"

    for i in range(n):
        if problems.full:
            break
        where = where_of(i)
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
                        problems.add(where, "not_a_number", f"{c}: {v[:40]!r} is not a number", c)
                        bad = True
                        continue
                elif c == "event_time" and v.strip().lstrip("-").isdigit():
                    v = int(v)
            row[c] = v
        flag = _bool(cols["is_fraud"][i])
        if flag is None:
            problems.add(where, "not_a_boolean",
                         f"is_fraud: {str(cols['is_fraud'][i])[:40]!r} is not a boolean "
                         "(true/false, 1/0, yes/no)", "is_fraud")
            bad = True
        ingest_ms: int | None = None
        if ingest_col is not None and _present(ingest_col[i]):
            try:
                ingest_ms = _time_cell(ingest_col[i], is_csv, "ingest_time")
            except ValueError as exc:
                problems.add(where, "bad_ingest_time", str(exc), "ingest_time")
                bad = True
        if bad:
            continue
        try:
            result = decoder.decode(encode(row), now if ingest_ms is None else ingest_ms)
        except (TypeError, OverflowError) as exc:  # e.g. a float NaN or a non-JSON value
            result = Rejection("wrong_type", f"unencodable value ({exc})")
        if isinstance(result, Rejection):
            problems.add(where, result.error_class, result.reason)
            continue
        lt_raw = label_col[i] if label_col is not None else None
        if _present(lt_raw):
            try:
                lt = _time_cell(lt_raw, is_csv, "label_time")
            except ValueError as exc:
                problems.add(where, "bad_label_time", str(exc), "label_time")
                continue
            if lt < result.event_time:
                problems.add(where, "label_before_event",
                             f"label_time: {lt} is before event_time {result.event_time}",
                             "label_time")
                continue
        else:
            lt = result.event_time + delay
        j = first_of.get(result.transaction_id)
        if j is not None:
            other = where_of(kept_rows[j])
            tid = result.transaction_id
            if txns[j] != result:
                diff = [f for f in Transaction.__struct_fields__
                        if getattr(txns[j], f) != getattr(result, f)]
                problems.add(where, "duplicate_conflict",
                             f"transaction_id: {tid!r} repeats {other} with a different body "
                             f"({', '.join(diff[:4])})", "transaction_id")
            elif fraud[j] != bool(flag) or (flag and label_time[j] != lt):
                problems.add(where, "label_conflict",
                             f"transaction_id: {tid!r} repeats {other} with a different label "
                             "(is_fraud or label_time)", "transaction_id")
            else:
                hygiene.duplicates += 1
                if len(hygiene.duplicate_examples) < MAX_PROBLEMS:
                    hygiene.duplicate_examples.append(
                        f"{where}: transaction_id {tid!r} repeats {other} exactly: dropped")
            continue
        first_of[result.transaction_id] = len(txns)
        txns.append(result)
        kept_rows.append(i)
        fraud.append(bool(flag))
        label_time.append(lt)
        ingest.append(result.event_time if ingest_ms is None else ingest_ms)
    if problems.refusals:
        raise HistoryError(source, problems.refusals[:MAX_PROBLEMS], _ROW_REMEDY)
    hygiene.skipped_by_rule = dict(problems.by_rule.most_common())
    hygiene.rows_kept = len(txns)
    if not txns:
        raise HistoryError(source, [
            f"no usable row ({n} read, {hygiene.skipped} skipped as invalid, "
            f"{hygiene.duplicates} exact repeats); first: "
            + (str(hygiene.skipped_examples[0]) if hygiene.skipped_examples else "empty file")
        ])
    scen: list[str | None] = [
        (str(scen_col[i]) if _present(scen_col[i]) else None) if scen_col else None
        for i in kept_rows
    ]
    return _sorted(
        txns, np.array(fraud, dtype=bool), np.array(label_time, dtype=np.int64), scen,
        np.array(ingest, dtype=np.int64) if ingest_col is not None else None, hygiene,
    )


def _sorted(txns: list[Transaction], fraud: np.ndarray, label_time: np.ndarray,
            scen: list[str | None], ingest: np.ndarray | None = None,
            hygiene: Hygiene | None = None) -> History:
    et = np.fromiter((t.event_time for t in txns), np.int64, len(txns))
    order = np.argsort(et, kind="stable")
    return History([txns[i] for i in order], fraud[order], label_time[order],
                   [scen[i] for i in order], None if ingest is None else ingest[order], hygiene)


def from_frame(df: pd.DataFrame) -> History:
    """Trusted in-memory history (the simulator's frame) without per-row validation.

    De-duplicated like :func:`load_history` (the first row of an id wins; exact repeats
    are dropped, conflicting repeats skipped, both counted in :attr:`History.hygiene`),
    so training sees the history the stream would keep.
    """
    cols = [c for c in TXN_COLUMNS if c in df.columns]
    data = {c: df[c].tolist() for c in cols}
    fraud_in = df["is_fraud"].to_numpy(bool)
    lt_in = df["label_time"].to_numpy(np.int64)
    scen_in = df["scenario"].tolist() if "scenario" in df.columns else [None] * len(df)
    ingest_in = None
    if "ingest_time" in df.columns:  # an empty cell gets the row's event time, as when loading
        ingest_in = df["ingest_time"].fillna(df["event_time"]).to_numpy(np.int64)
    hygiene = Hygiene(source="<frame>", rows_read=len(df))
    conflicts: Counter[str] = Counter()
    first_of: dict[str, int] = {}
    txns: list[Transaction] = []
    keep: list[int] = []
    for i in range(len(df)):
        txn = Transaction(**{c: data[c][i] for c in cols if _present(data[c][i])})
        j = first_of.get(txn.transaction_id)
        if j is None:
            first_of[txn.transaction_id] = len(txns)
            txns.append(txn)
            keep.append(i)
            continue
        first = keep[j]
        if txns[j] != txn:
            rule = "duplicate_conflict"
        elif fraud_in[first] != fraud_in[i] or (fraud_in[i] and lt_in[first] != lt_in[i]):
            rule = "label_conflict"
        else:
            hygiene.duplicates += 1
            if len(hygiene.duplicate_examples) < MAX_PROBLEMS:
                hygiene.duplicate_examples.append(
                    f"row {i + 1}: transaction_id {txn.transaction_id!r} repeats row {first + 1} "
                    "exactly: dropped")
            continue
        conflicts[f"transaction_id: {rule}"] += 1
        if len(hygiene.skipped_examples) < MAX_PROBLEMS:
            hygiene.skipped_examples.append(Problem(
                f"row {i + 1}", "transaction_id", rule,
                f"transaction_id: {txn.transaction_id!r} repeats row {first + 1} "
                f"({'different body' if rule == 'duplicate_conflict' else 'different label'})"))
    hygiene.skipped_by_rule = dict(conflicts)
    hygiene.rows_kept = len(txns)
    idx = np.array(keep, dtype=np.int64)
    return _sorted(txns, fraud_in[idx], lt_in[idx],
                   [scen_in[i] if _present(scen_in[i]) else None for i in keep],
                   None if ingest_in is None else ingest_in[idx], hygiene)


def write_history(df: pd.DataFrame, path: Path) -> None:
    """Write a history frame as Parquet, or CSV when ``path`` ends with ``.csv``.

    CSV text cells that a spreadsheet would run as a formula get a ``'`` in front
    (:mod:`topics.csvsafe`); Parquet is written as is.
    """
    if str(path).lower().endswith(".csv"):
        from topics.csvsafe import neutralise_frame

        neutralise_frame(df).to_csv(path, index=False)
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
