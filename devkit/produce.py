"""Publish transactions, synthetic or replayed from a file (``python -m devkit.produce``).

Synthetic transactions come from the fraud simulator's world
(:func:`training.simulate.transaction_stream`). Records are JSON (the
``Transaction`` contract) keyed by card id. Every delivery
report is checked: a message the broker did not acknowledge is an error, never
a silent loss. Files are JSON lines, CSV or Parquet with the transactions
schema; each row is decoded into ``Transaction`` and a bad row fails with its
row number and field.

``--duplicates FRACTION`` re-delivers that share of the transactions with the
same key and bytes, half right after the original and half a simulated day
later (once the event time has moved a day on, or at the end), as an
at-least-once producer does after a retry or a replay (:func:`with_duplicates`).
"""

from __future__ import annotations

import argparse
import csv
import heapq
import random
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import KafkaError, Producer

from devkit.cli import run_cli
from devkit.pacing import TokenBucket
from devkit.progress import counting
from topics.contracts import Transaction
from topics.errors import BrokerError, FraudStreamError, InputError
from topics.producer import PACED_PRODUCER, PRODUCER_DEFAULTS, produce_waiting
from topics.registry import TOPICS
from topics.settings import BOOTSTRAP_ENV, KafkaSettings
from topics.validation import TRANSACTION_PATTERNS, _reject_from_validation_error, parse_time_ms

FORMATS = ("jsonl", "csv", "parquet")
DAY_MS = 86_400_000
_NUMBER = re.compile(r"^-?\d+(?:\.\d*)?(?:[eE][+-]?\d+)?$")
_BOM = b"\xef\xbb\xbf"


def produce_transactions(
    settings: KafkaSettings,
    topic: str,
    transactions: Iterable[Transaction],
    *,
    rate: float | None = None,
    progress: bool = True,
    total: int | None = None,
    config: Mapping[str, str | int | bool] | None = None,
    flush_timeout: float = 60.0,
) -> int:
    """Produce every transaction (key: card id) to ``topic``; return how many were delivered.

    ``rate`` caps messages per second (token bucket); None is as fast as possible.
    Raises :class:`BrokerError` if any message is not acknowledged.
    """
    encode = msgspec.json.Encoder().encode
    records = ((txn.card_id.encode(), encode(txn)) for txn in transactions)
    with counting(f"produce {topic}", total, enabled=progress) as update:
        return produce_records(settings, topic, records, rate=rate, on_progress=update,
                               on_done=update, config=config,
                               flush_timeout=flush_timeout)  # fmt: skip


def produce_records(
    settings: KafkaSettings,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes]],
    *,
    rate: float | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_done: Callable[[int], None] | None = None,
    config: Mapping[str, str | int | bool] | None = None,
    flush_timeout: float = 60.0,
) -> int:
    """Produce ``(key, value)`` records to ``topic``; return how many were delivered.

    Keys are placed by the murmur2 partitioner (:data:`PRODUCER_DEFAULTS`), as the
    Java client does; a paced producer (``rate``) batches for longer
    (:data:`~topics.producer.PACED_PRODUCER`). ``on_progress(sent)`` is called every
    chunk, ``on_done(delivered)`` at the end. Raises :class:`BrokerError` if any record
    is not acknowledged.
    """
    defaults = {**PRODUCER_DEFAULTS, **(PACED_PRODUCER if rate else {})}
    producer = Producer({**settings.client_config(**defaults), **(config or {})})
    failures: list[KafkaError] = []
    delivered = 0

    def on_delivery(err: KafkaError | None, _msg: Any) -> None:
        nonlocal delivered
        if err is not None:
            failures.append(err)
        else:
            delivered += 1

    def check() -> None:
        if failures:
            raise BrokerError(
                f"{len(failures)} message(s) to {topic!r} on {settings.bootstrap_servers} were "
                f"not delivered; first error: {failures[0].str()}"
            )

    progress = on_progress or (lambda _n: None)
    done = on_done or (lambda _n: None)
    bucket = TokenBucket(rate) if rate else None
    chunk = max(1, int(rate / 50)) if rate else 1000  # paced: 20 ms of records per wait
    sent = 0
    try:
        for key, value in records:
            if bucket is not None and sent % chunk == 0:
                bucket.wait(chunk)
            produce_waiting(producer, topic, value, key, on_delivery)
            sent += 1
            if sent % chunk == 0:
                producer.poll(0)
                check()
                progress(sent)
        remaining = producer.flush(flush_timeout)
    except BaseException:  # Ctrl-C, a bad input row: deliver what was sent, then fail
        producer.flush(5.0)
        done(delivered)
        raise
    check()
    if remaining:
        raise BrokerError(
            f"{remaining} message(s) to {topic!r} still unacknowledged after {flush_timeout:g} s; "
            f"is {settings.bootstrap_servers} reachable?"
        )
    done(delivered)
    if delivered != sent:  # pragma: no cover - librdkafka reports every message
        raise BrokerError(f"sent {sent} messages but only {delivered} were acknowledged")
    return delivered


class Redeliveries:
    """Re-deliver about ``fraction`` of ``items`` unchanged, as an at-least-once producer does.

    Each chosen item is yielded again, the same object (so the same key and bytes):
    ``immediate_share`` of them right after the original, the others once the
    stream's event time has moved ``delay_ms`` past the original (default a
    simulated day) or at the end of the stream. Seeded: the same input and seed
    give the same output. Counts are in ``immediate`` and ``delayed``.

    >>> from topics.contracts import Transaction
    >>> txns = [Transaction(transaction_id=f"t{i}", card_id="c", merchant_id="m", amount=1.0,
    ...                     currency="EUR", event_time=i * 3_600_000) for i in range(48)]
    >>> out = with_duplicates(txns, 0.25, seed=1)
    >>> ids = [t.transaction_id for t in out]
    >>> len(ids) - 48 == out.immediate + out.delayed > 0, len(set(ids)) == 48
    (True, True)
    """

    def __init__(
        self,
        items: Iterable[Transaction],
        fraction: float,
        *,
        seed: int = 0,
        delay_ms: int = DAY_MS,
        immediate_share: float = 0.5,
    ) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("the duplicates fraction must be between 0 and 1")
        self.items, self.fraction, self.delay_ms = items, fraction, delay_ms
        self.immediate_share = immediate_share
        self.rng = random.Random(seed)
        self.immediate = 0
        self.delayed = 0

    def __iter__(self) -> Iterator[Transaction]:
        pending: list[tuple[int, int, Transaction]] = []  # (due event time, seq, txn)
        for seq, txn in enumerate(self.items):
            while pending and pending[0][0] <= txn.event_time:
                yield heapq.heappop(pending)[2]
            yield txn
            if self.fraction and self.rng.random() < self.fraction:
                if self.rng.random() < self.immediate_share:
                    self.immediate += 1
                    yield txn
                else:
                    self.delayed += 1
                    heapq.heappush(pending, (txn.event_time + self.delay_ms, seq, txn))
        while pending:
            yield heapq.heappop(pending)[2]


def with_duplicates(
    items: Iterable[Transaction], fraction: float, *, seed: int = 0, delay_ms: int = DAY_MS
) -> Redeliveries:
    """``items`` with about ``fraction`` of them re-delivered (see :class:`Redeliveries`)."""
    return Redeliveries(items, fraction, seed=seed, delay_ms=delay_ms)


def _to_ms(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("event_time: timestamp has no time zone (store UTC timestamps)")
        return round(value.timestamp() * 1000)
    if isinstance(value, str):
        text = value.strip()
        if _NUMBER.match(text):  # epoch ms written as text, e.g. 1795953540000 or ...000.0
            return parse_time_ms("event_time", int(text) if text.isdigit() else float(text))
        return parse_time_ms("event_time", value)
    if isinstance(value, float):
        return parse_time_ms("event_time", value)
    return value


def _row_to_transaction(row: dict[str, Any], where: str, strict: bool) -> Transaction:
    try:
        if "event_time" in row:
            row["event_time"] = _to_ms(row["event_time"])
        txn = msgspec.convert(row, Transaction, strict=strict)
    except msgspec.ValidationError as exc:
        raise InputError(f"{where}: {_reject_from_validation_error(exc).reason}") from exc
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from exc
    unmatched = TRANSACTION_PATTERNS.first_unmatched(txn)
    if unmatched is not None:
        raise InputError(f"{where}: {unmatched.reason}")
    return txn


def json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` per non-blank line of a JSON-lines file.

    A leading UTF-8 BOM is ignored (RFC 8259 8.1: a parser may ignore it). Raises
    :class:`InputError` naming the file and line of a line that is not a JSON object.
    """
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            if line_no == 1:
                line = line.removeprefix(_BOM)
            if not line.strip():
                continue
            try:
                obj = msgspec.json.decode(line)
            except msgspec.DecodeError as exc:
                raise InputError(f"{path} line {line_no}: not valid JSON: {exc}") from exc
            if not isinstance(obj, dict):
                raise InputError(f"{path} line {line_no}: expected a JSON object")
            yield line_no, obj


def _read_jsonl(path: Path) -> Iterator[Transaction]:
    for line_no, row in json_lines(path):
        yield _row_to_transaction(row, f"{path} line {line_no}", strict=True)


def _read_csv(path: Path) -> Iterator[Transaction]:
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a leading BOM is ignored
        reader = csv.DictReader(f)
        for row_no, raw in enumerate(reader, 1):
            where = f"{path} row {row_no} (line {reader.line_num})"
            if None in raw:
                raise InputError(f"{where}: more values than header columns")
            row: dict[str, Any] = {k: v for k, v in raw.items() if v not in (None, "")}
            if "attributes" in row:
                try:
                    row["attributes"] = msgspec.json.decode(row["attributes"])
                except msgspec.DecodeError as exc:
                    raise InputError(f"{where}: attributes: not a JSON object") from exc
            yield _row_to_transaction(row, where, strict=False)


def _read_parquet(path: Path) -> Iterator[Transaction]:
    import pyarrow.parquet as pq

    row_no = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
        for raw in batch.to_pylist():
            row_no += 1
            row = {k: v for k, v in raw.items() if v is not None}
            yield _row_to_transaction(row, f"{path} row {row_no}", strict=True)


def detect_format(path: Path) -> str:
    """File format from the suffix: ``jsonl``, ``csv`` or ``parquet``.

    >>> detect_format(Path("history.ndjson")), detect_format(Path("a.CSV"))
    ('jsonl', 'csv')
    """
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".parquet"):
        return suffix[1:]
    if suffix == ".pq":
        return "parquet"
    raise InputError(f"{path}: cannot tell the format from the suffix; pass --format")


def read_transactions(path: Path | str, fmt: str | None = None) -> Iterator[Transaction]:
    """Decode a JSON-lines, CSV or Parquet file into transactions, lazily, row by row.

    A row that does not fit the contract raises :class:`InputError` naming the
    row and the field. ``event_time`` may be epoch ms, RFC 3339 or a Parquet timestamp.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    readers: dict[str, Callable[[Path], Iterator[Transaction]]] = {
        "jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet,
    }  # fmt: skip
    return readers[fmt or detect_format(path)](path)


def resolve_topic(settings: KafkaSettings, topic: str) -> str:
    """A logical topic name (``transactions``) becomes its real name; others pass through."""
    return settings.topic(topic) if topic in TOPICS else topic


def require_topic(settings: KafkaSettings, topic: str) -> None:
    """Raise :class:`BrokerError` with the remedy if ``topic`` does not exist."""
    from topics.admin import topic_partitions

    if topic not in topic_partitions(settings):
        raise BrokerError(
            f"topic {topic!r} does not exist on {settings.bootstrap_servers}; create the "
            "registry topics with `just topics` (python -m devkit.topics)"
        )


def _limited(items: Iterable[Transaction], limit: int | None) -> Iterator[Transaction]:
    for i, item in enumerate(items):
        if limit is not None and i >= limit:
            return
        yield item


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.produce",
        description=(
            "Publish card transactions (JSON, keyed by card id) to Kafka: synthetic ones from "
            "the fraud simulator's world (legitimate traffic, seeded), or a replay of a file "
            "with --file. Progress (count, rate, ETA) goes to stderr; every delivery is "
            "checked and a failed one stops the command with exit code 1."
        ),
        epilog=(
            f"environment: {BOOTSTRAP_ENV}=host:port selects the broker (unset: the dev broker "
            "of `just broker`, else an embedded broker that lives only as long as this command, "
            "so the data is gone when it ends); FRAUD_TOPIC_PREFIX and FRAUD_TOPIC_<NAME> set "
            "topic names; FRAUD_KAFKA_<PROPERTY> passes a librdkafka option (dots as "
            "underscores, e.g. FRAUD_KAFKA_COMPRESSION_TYPE=none). Exit codes: 0 ok, 1 error, "
            "130 interrupted."
        ),
    )
    parser.add_argument(
        "--topic", default="transactions",
        help="logical topic name (mapped through the settings) or a real topic name "
        "(default: transactions)",
    )  # fmt: skip
    parser.add_argument(
        "--count", type=int, default=None, metavar="N",
        help="number of transactions: synthetic default 10000, 0 means endless (Ctrl-C stops); "
        "with --file, stop after N rows (default: the whole file)",
    )  # fmt: skip
    parser.add_argument(
        "--cards", type=int, default=1000, metavar="N",
        help="synthetic: size of the card pool (default: 1000)",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=None,
        help="synthetic: random seed; same seed, same transactions and ids (default: random, "
        "printed)",
    )  # fmt: skip
    parser.add_argument(
        "--start", default=None, metavar="TIME",
        help="synthetic: first event time, epoch ms or RFC 3339 (default: now)",
    )  # fmt: skip
    parser.add_argument(
        "--file", type=Path, default=None,
        help="replay this file instead of generating: JSON lines (.jsonl/.ndjson/.json), .csv "
        "or .parquet with the transactions schema",
    )  # fmt: skip
    parser.add_argument(
        "--format", choices=FORMATS, default=None,
        help="file format when the suffix does not tell it",
    )  # fmt: skip
    parser.add_argument(
        "--rate", type=float, default=None, metavar="MSG_PER_S",
        help="target rate in messages per second (default: as fast as possible)",
    )  # fmt: skip
    parser.add_argument(
        "--duplicates", type=float, default=0.0, metavar="FRACTION",
        help="re-deliver this share of the transactions (0..1) with the same key and bytes: "
        "half right after the original, half a simulated day later (event time + 24 h, or "
        "at the end); tests idempotency (default: 0)",
    )  # fmt: skip
    parser.add_argument(
        "--no-progress", action="store_true", help="do not print progress on stderr"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m devkit.produce``."""
    from devkit.broker import connect
    from training.simulate import transaction_stream

    args = _parse_args(argv)
    if args.rate is not None and args.rate <= 0:
        print("error: --rate must be positive", file=sys.stderr)
        return 2
    if not 0.0 <= args.duplicates <= 1.0:
        print("error: --duplicates must be a fraction between 0 and 1, e.g. 0.02",
              file=sys.stderr)  # fmt: skip
        return 2
    seed = args.seed if args.seed is not None else int(time.time_ns() % 1_000_000_007)

    def body() -> None:
        source: Iterable[Transaction]
        if args.file is not None:
            source = _limited(read_transactions(args.file, args.format), args.count)
            total = args.count
        else:
            count = 10_000 if args.count is None else args.count
            start = None
            if args.start:
                start = int(args.start) if args.start.isdigit() else parse_time_ms(
                    "--start", args.start
                )
            source = transaction_stream(
                count or None, seed=seed, cards=args.cards, start_ms=start
            )
            total = count or None
            print(f"synthetic transactions: seed={seed} cards={args.cards}", file=sys.stderr)
        redelivered = None
        if args.duplicates:
            source = redelivered = with_duplicates(source, args.duplicates, seed=seed)
            total = None
        with connect() as settings:
            topic = resolve_topic(settings, args.topic)
            require_topic(settings, topic)
            started = time.monotonic()
            n = produce_transactions(
                settings, topic, source, rate=args.rate, progress=not args.no_progress,
                total=total,
            )  # fmt: skip
            elapsed = time.monotonic() - started
        print(
            f"produced {n} transactions to {topic} on {settings.bootstrap_servers} "
            f"in {elapsed:.2f} s ({n / max(elapsed, 1e-9):,.0f} msg/s)",
            file=sys.stderr,
        )
        if redelivered is not None:
            print(
                f"re-delivered {redelivered.immediate + redelivered.delayed} of them "
                f"({redelivered.immediate} immediately, {redelivered.delayed} a simulated day "
                f"later; seed={seed})",
                file=sys.stderr,
            )
    return run_cli(body, (FraudStreamError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
