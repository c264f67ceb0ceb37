"""Manage analyst rules and lists on the ``rules`` and ``lists`` topics (``python -m rules.cli``).

Every change is validated first, against the current state read back from the
compacted topics (rules are compiled with the running feature spec, list
entries checked by kind); if anything is refused, nothing is published and the
command exits 2 with the reasons. Records are keyed by rule id and by
``<list>/<value>``; a delete publishes a tombstone. This is the rules room's
only code that talks to Kafka.

New rules and list entries get ``valid_from = now + --effective-in`` (default
60 s) unless the file sets one, so that every worker has applied them before
the first transaction they judge: decisions depend on event time, not on when
a worker read the record.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from rules.book import Applied, Message, Refused, RuleBook
from rules.contracts import LISTS_TOPIC, RULES_TOPIC, ListEntry, Rule, list_key
from rules.errors import RulesFileError
from topics.errors import BrokerError, FraudStreamError
from topics.settings import BOOTSTRAP_ENV, KafkaSettings

EXIT_BAD_INPUT = 2


class Refusals(FraudStreamError):
    """Validation refused some items; nothing was published."""


def ensure_topics(settings: KafkaSettings) -> tuple[str, str]:
    """Create the compacted ``rules`` and ``lists`` topics if missing; return their names."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    from topics.admin import topic_partitions

    names = (settings.topic(RULES_TOPIC.logical), settings.topic(LISTS_TOPIC.logical))
    existing = topic_partitions(settings)
    missing = [
        NewTopic(name, num_partitions=spec.partitions, config=dict(spec.config))
        for name, spec in zip(names, (RULES_TOPIC, LISTS_TOPIC), strict=True)
        if name not in existing
    ]
    if missing:
        admin = AdminClient(dict(settings.client_config()))
        for name, future in admin.create_topics(missing, request_timeout=30).items():
            try:
                future.result(30)
            except KafkaException as exc:
                if exc.args[0].code() != 36:  # TOPIC_ALREADY_EXISTS: lost a race, fine
                    raise BrokerError(f"cannot create topic {name!r}: {exc}") from exc
    return names


def read_book(settings: KafkaSettings, names: tuple[str, str]) -> RuleBook:
    """The current state: both compacted topics read to their end into a :class:`RuleBook`."""
    from topics.reader import iter_topic

    book = RuleBook()
    for topic, name in zip(("rules", "lists"), names, strict=True):
        for record in iter_topic(settings, name, idle_timeout=10.0):
            book.apply(Message(topic, record.key, record.value))  # type: ignore[arg-type]
    return book


def publish(
    settings: KafkaSettings, topic: str, records: Sequence[tuple[str, bytes | None]]
) -> None:
    """Produce ``(key, value)`` records in order and wait for every acknowledgement."""
    from confluent_kafka import Producer

    from topics.producer import produce_waiting

    options: dict[str, str | int | bool] = {"acks": "all", "linger.ms": 5,
                                            "log.connection.close": False}
    producer = Producer(dict(settings.client_config(**options)))
    failures: list[Any] = []
    for key, value in records:
        produce_waiting(producer, topic, value, key.encode(),  # type: ignore[arg-type]
                        lambda err, _msg: failures.append(err) if err is not None else None)
    remaining = producer.flush(30)
    if failures or remaining:
        raise BrokerError(
            f"{len(failures) + remaining} record(s) to {topic!r} were not acknowledged"
            + (f": {failures[0].str()}" if failures else "")
        )


def _stamp(items: Iterable[dict[str, Any]], lead_ms: int) -> list[dict[str, Any]]:
    out = []
    for item in items:
        item = dict(item)
        if lead_ms > 0 and item.get("valid_from") is None:
            item["valid_from"] = int(time.time() * 1000) + lead_ms
        out.append(item)
    return out


def _check(results: Iterable[Applied | Refused]) -> None:
    refused = [r for r in results if isinstance(r, Refused)]
    if refused:
        raise Refusals("refused, nothing published:\n  " + "\n  ".join(r.reason for r in refused))


def plan_rules(book: RuleBook, raw: list[dict[str, Any]], *, update: bool) -> list[Rule]:
    """Rules to publish, versions filled in, validated against ``book`` (which they update)."""
    from rules.contracts import ContractError, rule_from_obj

    rules = []
    for i, item in enumerate(raw):
        current = {r.id: r for r in book.rules()}.get(str(item.get("id")))
        if update and current is None:
            raise Refusals(f"rules[{i}]: no rule {item.get('id')!r} to update; use `add`")
        if not update and current is not None:
            raise Refusals(f"rules[{i}]: rule {current.id!r} exists (version "
                           f"{current.version}); use `update`")  # fmt: skip
        item = dict(item)
        item.setdefault("version", current.version + 1 if current else 1)
        if current is not None and item["version"] <= current.version:
            raise Refusals(f"rules[{i}]: version {item['version']} is not above the current "
                           f"{current.version}")  # fmt: skip
        try:
            rules.append(rule_from_obj(item))
        except ContractError as exc:
            raise Refusals(f"rules[{i}] ({item.get('id')}): {exc}") from None
    _check(book.put_rule(r) for r in rules)
    return rules


def _rules_table(book: RuleBook) -> Any:
    from rich.table import Table

    from devkit.tail import iso_ms

    table = Table(title=f"rules (rule set {book.version})")
    for column in ("id", "v", "action", "mode", "prio", "enabled", "valid", "description",
                   "expression"):  # fmt: skip
        table.add_column(column, overflow="fold")
    for r in book.rules():
        valid = "-" if r.valid_from is None and r.valid_until is None else (
            f"{iso_ms(r.valid_from) if r.valid_from else '…'} .. "
            f"{iso_ms(r.valid_until) if r.valid_until else '…'}"
        )
        table.add_row(r.id, str(r.version), r.action, r.mode, str(r.priority),
                      "yes" if r.enabled else "no", valid, r.description, r.expression)
    return table


def _entries_table(book: RuleBook) -> Any:
    from rich.table import Table

    from devkit.tail import iso_ms

    table = Table(title="list entries")
    for column in ("list", "kind", "value", "valid from", "expires", "added by", "reason"):
        table.add_column(column, overflow="fold")
    for e in book.lists.entries():
        table.add_row(e.list, e.kind, e.value, iso_ms(e.valid_from) if e.valid_from else "-",
                      iso_ms(e.expires) if e.expires else "-", e.added_by, e.reason)
    return table


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m rules.cli",
        description=__doc__.split("\n\n")[0] + " " + (
            "Files are YAML or JSON: a list of rules, or a mapping with `rules:` and/or "
            "`lists:` (see rules/examples/policies.yaml)."
        ),
        epilog=(
            f"environment: {BOOTSTRAP_ENV}=host:port selects the broker (unset: the dev broker "
            "of `just broker`, else an embedded broker for this command only); "
            "FRAUD_TOPIC_PREFIX prefixes the topic names (rules, lists); FRAUD_KAFKA_<PROPERTY> "
            "passes a librdkafka option. Exit codes: 0 ok, 1 broker error, 2 refused input."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("list", help="show the rules (and with --entries the list entries) in force") \
        .add_argument("--entries", action="store_true", help="also show list entries")
    check = sub.add_parser("validate", help="compile a file's rules and check its entries; "
                                            "no broker")  # fmt: skip
    check.add_argument("file", type=Path)
    for name, text in (("add", "publish new rules (version 1 unless given) and list entries"),
                       ("update", "publish new versions of existing rules (next version unless "
                                  "given) and list entries"),
                       ("add-entries", "publish the file's list entries")):  # fmt: skip
        p = sub.add_parser(name, help=text)
        p.add_argument("file", type=Path)
        p.add_argument("--effective-in", type=float, default=60.0, metavar="SECONDS",
                       help="valid_from = now + SECONDS when the file gives none (default 60; "
                       "0: in force for every event time)")
    remove = sub.add_parser("remove-entries", help="tombstone the file's list entries "
                                                   "(list and value suffice)")  # fmt: skip
    remove.add_argument("file", type=Path)
    for name, text in (("disable", "publish the next version of rules with enabled: false"),
                       ("delete", "tombstone rules (removed from the compacted topic)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("ids", nargs="+", metavar="RULE_ID")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:  # noqa: C901 - one branch per sub-command
    """Entry point of ``python -m rules.cli``."""
    from rich.console import Console

    from devkit.broker import connect
    from rules.files import read_rules_file

    args = _parse_args(argv)
    console = Console()
    try:
        if args.command == "validate":
            doc = read_rules_file(args.file)
            book = RuleBook()
            for entry in doc.entry_objects():
                book.put_entry(entry)
            _check(book.put_rule(r) for r in doc.rule_objects())
            print(f"{args.file}: {len(doc.rules)} rule(s) and {len(doc.entries)} entr(ies) valid; "
                  f"{sum(c.fast is None for c in book.compiled())} evaluated row by row")
            return 0
        given = read_rules_file(args.file) if hasattr(args, "file") else None
        with connect(quiet=True) as settings:
            names = ensure_topics(settings)
            book = read_book(settings, names)
            rules_topic, lists_topic = names
            if args.command == "list":
                console.print(_rules_table(book))
                if args.entries:
                    console.print(_entries_table(book))
                return 0
            lead = int(getattr(args, "effective_in", 0) * 1000)
            entries: list[ListEntry] = []
            rules: list[Rule] = []
            tombstones: list[tuple[str, bytes | None]] = []
            if given is not None and args.command in ("add", "update", "add-entries"):
                given.entries = _stamp(given.entries, lead)
                entries = given.entry_objects()
                if args.command != "add-entries":
                    rules = plan_rules(book, _stamp(given.rules, lead),
                                       update=args.command == "update")  # fmt: skip
            elif given is not None and args.command == "remove-entries":
                for i, item in enumerate(given.entries):
                    if not item.get("list") or item.get("value") is None:
                        raise Refusals(f"lists[{i}]: give `list` and `value`")
                    tombstones.append((f"{item['list']}/{item['value']}", None))
            elif args.command in ("disable", "delete"):
                current = {r.id: r for r in book.rules()}
                unknown = [i for i in args.ids if i not in current]
                if unknown:
                    raise Refusals(f"no such rule(s): {', '.join(unknown)}")
                for rule_id in args.ids:
                    if args.command == "delete":
                        tombstones.append((rule_id, None))
                    else:
                        rule = current[rule_id]
                        rules.append(msgspec.structs.replace(rule, version=rule.version + 1,
                                                             enabled=False))
            if entries:
                publish(settings, lists_topic,
                        [(list_key(e), msgspec.json.encode(e)) for e in entries])
            if tombstones and args.command == "remove-entries":
                publish(settings, lists_topic, tombstones)
            if rules:
                publish(settings, rules_topic, [(r.id, msgspec.json.encode(r)) for r in rules])
            if tombstones and args.command == "delete":
                publish(settings, rules_topic, tombstones)
            done = len(entries) + len(rules) + len(tombstones)
            print(f"published {done} record(s) to {rules_topic}/{lists_topic} on "
                  f"{settings.bootstrap_servers}", file=sys.stderr)
            return 0
    except (Refusals, RulesFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except FraudStreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
