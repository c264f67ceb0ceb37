"""Show the records of a topic (``just tail TOPIC``, ``python -m devkit.tail TOPIC``).

Reads with :func:`topics.reader.iter_topic`: ``assign()`` over every partition,
never a consumer group (no offsets are committed, nothing joins a group). By
default one readable line per record: partition@offset, key, and a summary of
the decoded contract of the topic; ``--json`` prints the raw values as JSON lines.
"""

from __future__ import annotations

import argparse
import base64
import sys
from datetime import UTC, datetime

import msgspec

from devkit.cli import run_cli
from topics.contracts import DeadLetter, DriftSnapshot, Label, Prediction, Transaction
from topics.reader import DEFAULT_IDLE_TIMEOUT, Record, iter_topic
from topics.registry import TOPICS
from topics.settings import BOOTSTRAP_ENV, KafkaSettings


def logical_name(settings: KafkaSettings, topic: str) -> str | None:
    """The registry's logical name for a real or logical topic name, if it has one."""
    if topic in TOPICS:
        return topic
    return next((name for name in TOPICS if settings.topic(name) == topic), None)


def iso_ms(ms: int) -> str:
    """UTC epoch milliseconds as RFC 3339.

    >>> iso_ms(1700000000000)
    '2023-11-14T22:13:20.000Z'
    """
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _preview(raw: bytes | None, width: int = 60) -> str:
    if raw is None:
        return "null"
    text = raw.decode("utf-8", errors="replace")
    return repr(text if len(text) <= width else text[:width] + "…")


def summarize(logical: str | None, value: bytes | None) -> str:
    """A compact one-line summary of a record value, by topic type.

    >>> summarize("labels", b'{"transaction_id":"t1","card_id":"c1","merchant_id":"m1",'
    ...           b'"is_fraud":true,"label_time":1700000000000,"source":"chargeback"}')
    't1 card=c1 merchant=m1 FRAUD (chargeback) known from 2023-11-14T22:13:20.000Z'
    """
    if value is None:
        return "(tombstone)"
    contract = TOPICS[logical].contract if logical is not None and logical in TOPICS else None
    if contract is None:
        return _preview(value, 120)
    try:
        obj = msgspec.json.decode(value, type=contract)
    except msgspec.MsgspecError as exc:
        return f"(not a valid {contract.__name__}: {exc}) {_preview(value)}"
    if isinstance(obj, Transaction):
        return (
            f"{obj.transaction_id} card={obj.card_id} {obj.amount:.2f} {obj.currency} "
            f"merchant={obj.merchant_id} mcc={obj.mcc or '-'} "
            f"{obj.channel or '-'}/{obj.entry_mode or '-'} {obj.country or '-'} "
            f"at {iso_ms(obj.event_time)}"
        )
    if isinstance(obj, Prediction):
        text = (
            f"{obj.transaction_id} card={obj.card_id} {obj.decision.upper()} "
            f"score={obj.score:.3f} model={obj.model_version}"
        )
        if obj.shadow_score is not None:
            text += f" shadow={obj.shadow_score:.3f}/{obj.shadow_decision or '-'}"
        if obj.reasons:
            text += " reasons=" + ",".join(r.feature for r in obj.reasons[:3])
        return text
    if isinstance(obj, Label):
        return (
            f"{obj.transaction_id} card={obj.card_id} merchant={obj.merchant_id} "
            f"{'FRAUD' if obj.is_fraud else 'legit'} ({obj.source or '-'}) "
            f"known from {iso_ms(obj.label_time)}"
        )
    if isinstance(obj, DriftSnapshot):
        top = sorted(obj.feature_psi.items(), key=lambda kv: -kv[1])[:3]
        return (
            f"{iso_ms(obj.window_start)}..{iso_ms(obj.window_end)} model={obj.model_version} "
            f"n={obj.count} score_psi={_fmt(obj.score_psi)} "
            f"top_psi={','.join(f'{k}={v:.3f}' for k, v in top) or '-'} "
            f"alerts={','.join(obj.alerts) or '-'}"
            + (f" labels: precision={_fmt(obj.labels.precision_flagged)} "
               f"recall={_fmt(obj.labels.recall_flagged)}" if obj.labels else "")
        )
    if isinstance(obj, DeadLetter):
        raw = base64.b64decode(obj.value_b64) if obj.value_b64 is not None else None
        return (
            f"{obj.error_class}: {obj.reason} [from {obj.source_topic} "
            f"p{obj.partition}@{obj.offset}] value={_preview(raw)}"
        )
    return _preview(value, 120)  # pragma: no cover - every registry contract is handled


def format_record(record: Record, logical: str | None) -> str:
    """One human-readable line: ``p<partition>@<offset> key=<key> <summary>``."""
    key = "-" if record.key is None else record.key.decode("utf-8", errors="replace")
    return f"p{record.partition}@{record.offset} key={key} {summarize(logical, record.value)}"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.tail",
        description=(
            "Show the records of a topic, one line each. Reads every partition by assignment "
            "(no consumer group, commits nothing), so it never disturbs other consumers."
        ),
        epilog=(
            f"environment: {BOOTSTRAP_ENV}=host:port selects the broker (unset: the dev broker "
            "of `just broker`, else an embedded, empty broker for this command only); "
            "FRAUD_TOPIC_PREFIX and FRAUD_TOPIC_<NAME> map logical names to real topic names; "
            "FRAUD_KAFKA_<PROPERTY> passes a librdkafka option (dots as underscores). "
            "Exit codes: 0 ok, 1 error, 130 interrupted."
        ),
    )
    parser.add_argument(
        "topic", metavar="TOPIC",
        help=f"logical name ({', '.join(TOPICS)}), mapped through the settings, or a real "
        "topic name",
    )  # fmt: skip
    parser.add_argument(
        "--json", action="store_true",
        help="print each record's raw value as one JSON line instead of a summary",
    )  # fmt: skip
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--from-beginning", dest="from_beginning", action="store_true", default=True,
        help="start at the earliest offset of every partition (default)",
    )  # fmt: skip
    start.add_argument(
        "--from-end", dest="from_beginning", action="store_false",
        help="only records that arrive from now on (implies --follow)",
    )  # fmt: skip
    parser.add_argument(
        "--limit", type=int, default=None, metavar="N", help="stop after N records"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, metavar="SECONDS",
        help="wait for records, and stop after SECONDS without one, even past the end of "
        f"the topic (default: stop at the end, or after {DEFAULT_IDLE_TIMEOUT:g} s idle; with "
        "--follow, never)",
    )  # fmt: skip
    parser.add_argument(
        "--follow", action="store_true",
        help="keep waiting for new records after reaching the end (Ctrl-C stops)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m devkit.tail``."""
    from devkit.broker import connect
    from devkit.produce import resolve_topic

    args = _parse_args(argv)
    # --timeout without --follow waits for records up to the idle time, even on an empty
    # topic (without it the end of every partition ends the command at once)
    follow = args.follow or not args.from_beginning or args.timeout is not None
    timeout = args.timeout if args.timeout is not None else (
        None if follow else DEFAULT_IDLE_TIMEOUT
    )  # fmt: skip

    def body() -> None:
        with connect() as settings:
            topic = resolve_topic(settings, args.topic)
            logical = logical_name(settings, topic)
            out = sys.stdout
            for record in iter_topic(
                settings, topic, from_beginning=args.from_beginning, follow=follow,
                limit=args.limit, idle_timeout=timeout,
            ):  # fmt: skip
                if args.json:
                    value = record.value
                    out.write("null" if value is None else value.decode("utf-8", "replace"))
                    out.write("\n")
                else:
                    out.write(format_record(record, logical) + "\n")
                if follow:
                    out.flush()
            out.flush()
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
