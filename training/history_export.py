"""Export the stream's own history (``transactions`` + ``labels`` topics) as a training file.

``python -m training.history_export --from 2025-01-01T00:00:00Z --to 2025-04-01T00:00:00Z
--out history.parquet`` (``just history``) reads both topics of the configured broker
(:meth:`topics.settings.KafkaSettings.from_env`: ``KAFKA_BOOTSTRAP_SERVERS``,
``FRAUD_TOPIC_PREFIX``; else a running ``just broker``) by partition assignment, no
consumer group and no committed offsets (:func:`topics.reader.iter_topic`), and writes
the bring-your-own history format of :mod:`training.history`. Point-in-time rules:

- **transactions**: validated as the flow validates them
  (:class:`topics.validation.TransactionDecoder`; invalid records are skipped and
  counted, as the flow dead-letters them), kept when ``--from <= event_time < --to``,
  **de-duplicated by transaction id like the stream**: the first record (by broker
  timestamp, then partition and offset) wins; a later one with another body is
  counted as a conflict (the flow dead-letters it as ``duplicate_conflict``);
- **labels**: only those known at ``--as-of`` (default: now) count; for each
  transaction the label **in force** gives ``is_fraud`` and ``label_time``: the latest
  by ``(label_time, is_fraud)`` (a fraud label wins a tie), as the stream resolves a
  transaction's labels (:mod:`state.labels`: a chargeback reversed later is not fraud).
  The file holds one label per transaction, so a transaction scored while a later
  reversed chargeback was in force saw it in the stream, not in this file;
- a transaction **without a label is legitimate so far**: ``is_fraud = false`` and
  ``label_time = as_of + --legit-delay-days`` (default 7), i.e. "still unlabelled at the
  end of the export": training counts it as legitimate at every cut-off, and its
  label time never precedes its event time.

Replaying the file through ``state`` (``just train``) gives every exported transaction
the feature vector the stream gave it (tested bit for bit). Exit codes: 0 written,
1 broker error, 2 bad input (times, empty export).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from state.labels import supersedes
from topics.contracts import Label, Transaction
from topics.errors import FraudStreamError
from training.history import DAY_MS, OPTIONAL, REQUIRED

MAX_MS = 253_402_300_799_999


class HistoryExportError(FraudStreamError):
    """The export cannot run (no broker, bad time bounds, nothing to export)."""


@dataclass
class ExportStats:
    """What the export read, kept and skipped."""

    transactions_read: int = 0
    invalid: Counter[str] = field(default_factory=Counter)
    out_of_range: int = 0
    duplicates: int = 0
    conflicts: int = 0
    labels_read: int = 0
    labels_invalid: int = 0
    labels_after_as_of: int = 0
    labels_repeated: int = 0
    labels_without_transaction: int = 0
    fraud: int = 0
    legit_labelled: int = 0
    unlabelled: int = 0

    def lines(self) -> list[str]:
        """Human-readable summary."""
        inv = sum(self.invalid.values())
        return [
            f"transactions read {self.transactions_read:,}: kept "
            f"{self.fraud + self.legit_labelled + self.unlabelled:,}, outside --from/--to "
            f"{self.out_of_range:,}, duplicates {self.duplicates:,} (conflicting bodies "
            f"{self.conflicts:,}), invalid {inv:,}"
            + (f" ({', '.join(f'{k} {v}' for k, v in self.invalid.most_common(3))})" if inv
               else ""),
            f"labels read {self.labels_read:,}: after --as-of {self.labels_after_as_of:,}, "
            f"repeated {self.labels_repeated:,}, for no exported transaction "
            f"{self.labels_without_transaction:,}, invalid {self.labels_invalid:,}",
            f"exported: fraud {self.fraud:,}, labelled legitimate {self.legit_labelled:,}, "
            f"unlabelled (legitimate so far) {self.unlabelled:,}",
        ]


def parse_when(text: str) -> int:
    """Epoch ms from epoch milliseconds, an RFC 3339 time or a date (``YYYY-MM-DD``, UTC)."""
    from topics.validation import parse_time_ms

    t = text.strip()
    if t.isdigit():
        return int(t)
    if len(t) == 10 and t[4] == "-" and t[7] == "-":
        t += "T00:00:00Z"
    try:
        return parse_time_ms("time", t)
    except ValueError as exc:
        raise HistoryExportError(f"{text!r}: {exc}; e.g. 2025-01-31 or 2025-01-31T12:00:00Z") \
            from exc


def build_history(
    txn_records: Iterable[Any],
    label_records: Iterable[Any],
    start_ms: int,
    end_ms: int,
    as_of_ms: int,
    legit_delay_days: float = 7.0,
    now_ms: int | None = None,
) -> tuple[dict[str, list[Any]], ExportStats]:
    """History columns by the module docstring's rules, and what was skipped.

    Records have ``.value``, ``.timestamp_ms``, ``.partition``, ``.offset``
    (:class:`topics.reader.Record`).
    """
    from topics.validation import LabelDecoder, TransactionDecoder

    now = int(time.time() * 1000) if now_ms is None else now_ms
    stats = ExportStats()
    decoder = TransactionDecoder()
    order = lambda r: (r.timestamp_ms or 0, r.partition, r.offset)  # noqa: E731
    kept: dict[str, tuple[Transaction, bytes]] = {}
    for rec in sorted(txn_records, key=order):
        stats.transactions_read += 1
        result = decoder.decode(rec.value, now)
        if not isinstance(result, Transaction):
            stats.invalid[result.error_class] += 1
            continue
        if not start_ms <= result.event_time < end_ms:
            stats.out_of_range += 1
            continue
        body = msgspec.json.encode(result)
        first = kept.get(result.transaction_id)
        if first is not None:
            stats.duplicates += 1
            stats.conflicts += first[1] != body
            continue
        kept[result.transaction_id] = (result, body)
    ldecoder = LabelDecoder()
    labels: dict[str, tuple[tuple[int, ...], Label]] = {}
    for rec in label_records:
        stats.labels_read += 1
        lab = ldecoder.decode(rec.value, now)
        if not isinstance(lab, Label):
            stats.labels_invalid += 1
            continue
        if lab.label_time > as_of_ms:
            stats.labels_after_as_of += 1
            continue
        key = (lab.label_time, int(lab.is_fraud), *order(rec))
        seen = labels.get(lab.transaction_id)
        if seen is not None:
            stats.labels_repeated += 1
            if not supersedes(lab.label_time, lab.is_fraud, seen[1].label_time,
                              seen[1].is_fraud):
                continue
        labels[lab.transaction_id] = (key, lab)
    stats.labels_without_transaction = sum(1 for t in labels if t not in kept)
    unlabelled_time = as_of_ms + int(legit_delay_days * DAY_MS)
    cols: dict[str, list[Any]] = {c: [] for c in (*REQUIRED, *OPTIONAL, "is_fraud",
                                                  "label_time")}
    for txn, _ in sorted(kept.values(), key=lambda tb: tb[0].event_time):
        for c in (*REQUIRED, *OPTIONAL):
            cols[c].append(getattr(txn, c))
        found = labels.get(txn.transaction_id)
        if found is None:
            stats.unlabelled += 1
            cols["is_fraud"].append(False)
            cols["label_time"].append(max(unlabelled_time, txn.event_time))
            continue
        lab = found[1]
        if lab.is_fraud:
            stats.fraud += 1
        else:
            stats.legit_labelled += 1
        cols["is_fraud"].append(bool(lab.is_fraud))
        cols["label_time"].append(max(lab.label_time, txn.event_time))
    return cols, stats


def export_history(
    settings: Any, out: Path, start_ms: int = 0, end_ms: int = MAX_MS,
    as_of_ms: int | None = None, legit_delay_days: float = 7.0, say: Any = None,
) -> ExportStats:
    """Read both topics of ``settings`` and write the history file ``out``."""
    import pandas as pd

    from topics.reader import iter_topic
    from training.history import write_history

    say = say or (lambda _m: None)
    as_of = int(time.time() * 1000) if as_of_ms is None else as_of_ms
    txn_topic, label_topic = settings.topic("transactions"), settings.topic("labels")
    say(f"reading {txn_topic} (every partition, by assignment)")
    txns = list(iter_topic(settings, txn_topic, idle_timeout=10))
    say(f"  {len(txns):,} records; reading {label_topic}")
    labs = list(iter_topic(settings, label_topic, idle_timeout=10))
    say(f"  {len(labs):,} records; building the history (labels known at as-of)")
    cols, stats = build_history(txns, labs, start_ms, end_ms, as_of, legit_delay_days)
    if not cols["transaction_id"]:
        raise HistoryExportError(
            f"no valid transactions with event_time in [{start_ms}, {end_ms}) on {txn_topic}; "
            "check --from/--to and FRAUD_TOPIC_PREFIX"
        )
    frame = pd.DataFrame(cols)
    frame["event_time"] = frame["event_time"].astype("int64")
    frame["label_time"] = frame["label_time"].astype("int64")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_history(frame, out)
    return stats


def resolve_settings() -> Any:
    """Kafka settings from the environment, or the running ``just broker``; no embedded one."""
    from topics.devbroker import running_dev_broker
    from topics.settings import KafkaSettings

    settings = KafkaSettings.from_env()
    if settings.bootstrap_servers:
        return settings
    dev = running_dev_broker()
    if dev is None:
        raise HistoryExportError(
            "no broker to read: set KAFKA_BOOTSTRAP_SERVERS (and FRAUD_TOPIC_PREFIX for the "
            "demo's topics), or keep `just broker` running while the demo fills it"
        )
    return settings.with_bootstrap(dev.bootstrap)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The time-range options (shared with ``training.retrain``)."""
    p.add_argument("--from", dest="start", default=None, metavar="TIME",
                   help="first event time exported (RFC 3339, YYYY-MM-DD or epoch ms; "
                        "default: the beginning)")
    p.add_argument("--to", dest="end", default=None, metavar="TIME",
                   help="event times before this are exported (default: no limit)")
    p.add_argument("--last-days", type=float, default=None, metavar="DAYS",
                   help="instead of --from: event times from as-of (or now) minus DAYS")
    p.add_argument("--as-of", default=None, metavar="TIME",
                   help="labels known at this time count (default: now)")
    p.add_argument("--legit-delay-days", type=float, default=7.0,
                   help="label_time of unlabelled transactions: as-of + this (default 7)")


def bounds(args: argparse.Namespace) -> tuple[int, int, int | None]:
    """(start, end, as_of) in epoch ms from the parsed options."""
    as_of = parse_when(args.as_of) if args.as_of else None
    start = parse_when(args.start) if args.start else 0
    if args.last_days is not None:
        if args.start:
            raise HistoryExportError("give --from or --last-days, not both")
        ref = as_of if as_of is not None else int(time.time() * 1000)
        start = ref - int(args.last_days * DAY_MS)
    end = parse_when(args.end) if args.end else MAX_MS
    if end <= start:
        raise HistoryExportError(f"--to ({args.end}) must be after --from ({args.start})")
    return start, end, as_of


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (see module docstring)."""
    from rich.console import Console

    p = argparse.ArgumentParser(prog="python -m training.history_export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--out", type=Path, default=Path("data/stream-history.parquet"),
                   help="history file, .parquet or .csv (default data/stream-history.parquet)")
    args = p.parse_args(argv)
    console = Console(stderr=True)
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        console.print(f"[history {time.perf_counter() - t0:5.1f}s] {msg}", markup=False,
                      highlight=False, soft_wrap=True)

    try:
        start, end, as_of = bounds(args)
        settings = resolve_settings()
        stats = export_history(settings, args.out, start, end, as_of, args.legit_delay_days, say)
    except HistoryExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FraudStreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for line in stats.lines():
        say(line)
    say(f"wrote {args.out}; train on it with `just train DATA={args.out}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
