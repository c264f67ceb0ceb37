"""Publish fraud labels from a file to Kafka (``python -m devkit.labels FILE``).

A label says whether a transaction was fraud, from ``label_time`` on (a
chargeback, an analyst's decision). Files are CSV, Parquet or JSON lines with
the ``labels`` contract's columns: ``transaction_id, card_id, merchant_id,
is_fraud, label_time`` and optionally ``source``; other columns are ignored, so
a simulated history (``python -m training.simulate``) works as it is. Every row
is validated with :class:`topics.validation.LabelDecoder` before anything is
published: a bad row stops the command with exit code 2, naming the line (CSV,
JSON lines; the CSV header is line 1) or row (Parquet) and the column. Records
are keyed by transaction id and placed by the murmur2 partitioner, like the
other producers.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from devkit.cli import run_cli
from devkit.produce import (
    FORMATS,
    detect_format,
    json_lines,
    produce_records,
    require_topic,
    resolve_topic,
)
from devkit.progress import counting
from topics.contracts import Label
from topics.errors import FraudStreamError, InputError
from topics.settings import BOOTSTRAP_ENV
from topics.validation import LabelDecoder, Rejection

REQUIRED = ("transaction_id", "card_id", "merchant_id", "is_fraud", "label_time")
COLUMNS = (*REQUIRED, "source")
#: Problems listed before giving up on a file.
MAX_PROBLEMS = 20
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}

Row = tuple[str, dict[str, Any]]  # (where, fields)


def _bool(value: Any) -> Any:
    """CSV booleans (true/false, 1/0, yes/no) to bool; anything else is left for the contract."""
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    return value


def _time(value: Any) -> Any:
    """Epoch ms written as text becomes a number; RFC 3339 text stays for the decoder."""
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        try:
            return float(text)
        except ValueError:
            return value
    return value


def _rows_csv(path: Path) -> Iterator[Row]:
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a leading BOM is ignored
        reader = csv.DictReader(f)
        for raw in reader:
            where = f"line {reader.line_num}"
            if None in raw:
                raise InputError(f"{path}: {where}: more values than header columns")
            yield where, {k: v for k, v in raw.items() if k in COLUMNS and v not in (None, "")}


def _rows_jsonl(path: Path) -> Iterator[Row]:
    for line_no, obj in json_lines(path):
        yield f"line {line_no}", {k: v for k, v in obj.items() if k in COLUMNS and v is not None}


def _rows_parquet(path: Path) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=None)
    except Exception as exc:
        raise InputError(f"{path}: cannot read as Parquet: {exc}") from exc
    names = [c for c in COLUMNS if c in table.column_names]
    cols: dict[str, list[Any]] = {}
    for name in names:
        col = table.column(name)
        if pa.types.is_timestamp(col.type):
            if col.type.tz is None:
                raise InputError(f"{path}: column `{name}`: timestamp without time zone; store "
                                 "UTC (tz='UTC') or epoch milliseconds")  # fmt: skip
            col = col.cast(pa.timestamp("ms", "UTC")).cast(pa.int64())
        cols[name] = col.to_pylist()
    for i in range(table.num_rows):
        yield f"row {i + 1}", {n: cols[n][i] for n in names if cols[n][i] is not None}


def read_labels(
    path: Path | str,
    fmt: str | None = None,
    *,
    now_ms: int | None = None,
    fraud_only: bool = False,
) -> list[Label]:
    """Read and validate every label of a file; raise :class:`InputError` listing the problems.

    Each problem names the line or row and the column, e.g. ``labels.csv: line 3:
    is_fraud: expected `bool`, got `str```. Times are judged against ``now_ms``
    (default: the wall clock) as the flow judges them against the record timestamp.
    ``fraud_only`` keeps the rows with ``is_fraud`` true.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    kind = fmt or detect_format(path)
    readers: dict[str, Callable[[Path], Iterator[Row]]] = {
        "csv": _rows_csv, "jsonl": _rows_jsonl, "parquet": _rows_parquet,
    }  # fmt: skip
    decoder = LabelDecoder()
    now = int(time.time() * 1000) if now_ms is None else now_ms
    encode = msgspec.json.Encoder().encode
    labels: list[Label] = []
    problems: list[str] = []
    header_checked = False
    for where, row in readers[kind](path):
        if not header_checked:
            header_checked = True
            if kind != "jsonl":
                missing = [c for c in REQUIRED if c not in _columns(path, kind)]
                if missing:
                    raise InputError(f"{path}: missing column(s) {', '.join(missing)}; need "
                                     f"{', '.join(REQUIRED)} (source optional)")  # fmt: skip
        if kind == "csv":  # CSV cells are text; JSON and Parquet keep their types
            if "is_fraud" in row:
                row["is_fraud"] = _bool(row["is_fraud"])
            if "label_time" in row:
                row["label_time"] = _time(row["label_time"])
        try:
            result = decoder.decode(encode(row), now)
        except (TypeError, OverflowError) as exc:
            result = Rejection("wrong_type", f"unencodable value ({exc})")
        if isinstance(result, Rejection):
            problems.append(f"{where}: {result.reason}")
            if len(problems) >= MAX_PROBLEMS:
                break
            continue
        if result.is_fraud or not fraud_only:
            labels.append(result)
    if problems:
        more = f" (stopped after {MAX_PROBLEMS})" if len(problems) >= MAX_PROBLEMS else ""
        raise InputError(f"{path}: {len(problems)} bad row(s){more}:\n  " + "\n  ".join(problems))
    return labels


def _columns(path: Path, kind: str) -> list[str]:
    if kind == "csv":
        with open(path, newline="", encoding="utf-8-sig") as f:
            return next(csv.reader(f), [])
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.labels",
        description=(
            "Publish fraud labels (JSON, the `labels` contract, keyed by transaction id) from "
            "a CSV, Parquet or JSON-lines file. Columns: transaction_id, card_id, merchant_id, "
            "is_fraud (a boolean; in CSV true/false, 1/0, yes/no), label_time (epoch ms or "
            "RFC 3339 with an offset), optional source (chargeback, analyst, customer, other); "
            "other columns are ignored. Every row is validated first: a bad row stops the "
            "command before anything is published, naming the line or row and the column."
        ),
        epilog=(
            f"environment: {BOOTSTRAP_ENV}=host:port selects the broker (unset: the dev broker "
            "of `just broker`); FRAUD_TOPIC_PREFIX and FRAUD_TOPIC_<NAME> set topic names; "
            "FRAUD_KAFKA_<PROPERTY> passes a librdkafka option. Exit codes: 0 ok, 1 broker "
            "error, 2 bad input, 130 interrupted."
        ),
    )
    parser.add_argument("file", type=Path, metavar="FILE",
                        help="labels file: .csv, .parquet/.pq or .jsonl/.ndjson/.json")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="file format when the suffix does not tell it")
    parser.add_argument("--topic", default="labels",
                        help="logical topic name or a real topic name (default: labels)")
    parser.add_argument("--fraud-only", action="store_true",
                        help="publish only rows with is_fraud true (e.g. from a simulated "
                        "history, where a transaction without a fraud label is legitimate)")
    parser.add_argument("--rate", type=float, default=None, metavar="MSG_PER_S",
                        help="target rate in messages per second (default: as fast as possible)")
    parser.add_argument("--check", action="store_true",
                        help="validate the file and print the count; publish nothing")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar on stderr")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m devkit.labels``."""
    args = _parse_args(argv)
    if args.rate is not None and args.rate <= 0:
        print("error: --rate must be positive", file=sys.stderr)
        return 2
    try:
        labels = read_labels(args.file, args.format, fraud_only=args.fraud_only)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fraud = sum(label.is_fraud for label in labels)
    if args.check:
        print(f"{args.file}: {len(labels)} valid labels ({fraud} fraud)", file=sys.stderr)
        return 0

    def body() -> None:
        from devkit.broker import connect

        encode = msgspec.json.Encoder().encode
        records = ((label.transaction_id.encode(), encode(label)) for label in labels)
        with connect() as settings:
            topic = resolve_topic(settings, args.topic)
            require_topic(settings, topic)
            started = time.monotonic()
            with counting(f"labels -> {topic}", len(labels),
                          enabled=not args.no_progress) as update:  # fmt: skip
                n = produce_records(settings, topic, records, rate=args.rate,
                                    on_progress=update, on_done=update)  # fmt: skip
            elapsed = time.monotonic() - started
        print(f"produced {n} labels ({fraud} fraud) to {topic} on {settings.bootstrap_servers} "
              f"in {elapsed:.2f} s", file=sys.stderr)  # fmt: skip

    return run_cli(body, (FraudStreamError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
