"""Create every registry topic, or list what exists (``just topics``, ``python -m devkit.topics``).

The command line over :mod:`topics.admin`: it finds a broker the development way
(:func:`devkit.broker.connect`: ``KAFKA_BOOTSTRAP_SERVERS``, a running ``just broker``,
else an embedded broker for this command only) and prints a table of the topics.
"""

from __future__ import annotations

import argparse
import logging
import sys

from devkit.broker import connect
from devkit.cli import run_cli
from topics.admin import ensure_topic_states, topic_partitions
from topics.registry import TOPICS
from topics.settings import BOOTSTRAP_ENV


def format_table(rows: list[list[str]], header: list[str]) -> str:
    """A plain-text table with left-aligned columns.

    >>> print(format_table([["a", "1"]], ["name", "n"]))
    name  n
    ----  -
    a     1
    """
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.topics",
        description=(
            "Create every topic of the registry (topics/registry.py) with its partitions and "
            "configs; existing topics are left as they are. Prints a table of what it found."
        ),
        epilog=(
            f"environment: {BOOTSTRAP_ENV}=host:port selects the broker (unset: the dev broker "
            "of `just broker`, else an embedded broker for this command only); "
            "FRAUD_TOPIC_PREFIX prefixes every topic name; FRAUD_TOPIC_<NAME> (e.g. "
            "FRAUD_TOPIC_DEAD_LETTER) overrides one name; FRAUD_KAFKA_<PROPERTY> passes a "
            "librdkafka option (dots as underscores, e.g. FRAUD_KAFKA_SECURITY_PROTOCOL)."
        ),
    )
    parser.add_argument(
        "--list", action="store_true",
        help="only list the registry topics and what exists on the broker; create nothing",
    )  # fmt: skip
    parser.add_argument(
        "--partitions", type=int, default=None, metavar="N",
        help="create missing topics with N partitions instead of the registry's count",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m devkit.topics``."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    def body() -> None:
        with connect(create_topics=False) as settings:
            if args.list:
                found = topic_partitions(settings)
                rows = [
                    [
                        logical,
                        settings.topic(logical),
                        str(spec.partitions),
                        str(found[settings.topic(logical)])
                        if settings.topic(logical) in found else "-",
                        "present" if settings.topic(logical) in found else "missing",
                    ]
                    for logical, spec in TOPICS.items()
                ]
                others = sorted(set(found) - {settings.topic(name) for name in TOPICS})
                rows += [["", name, "", str(found[name]), "not in registry"] for name in others]
            else:
                rows = [
                    [s.logical, s.name, str(s.wanted_partitions), str(s.partitions),
                     s.status + (f" — {s.note}" if s.note else "")]
                    for s in ensure_topic_states(settings, args.partitions)
                ]  # fmt: skip
            print(f"broker: {settings.bootstrap_servers}")
            print(format_table(rows, ["logical", "topic", "wanted", "partitions", "status"]))
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
