"""Manage analyst rules and lists on the ``rules`` and ``lists`` topics (``python -m rules.cli``).

Every change is validated first, against the current state read back from the
compacted topics (rules are compiled with the running feature spec, list
entries checked by kind); if anything is refused, nothing is published and the
command exits 2 with the reasons. Records are keyed by rule id and by
``<list>/<value>``. This is the rules room's only code that talks to Kafka.

Every record is signed with the analyst's Ed25519 key (``--key``, default the
dev maker key under ``.dev/rules-keys/``; :mod:`rules.signing`); a delete is a
signed version with ``enabled: false`` and a list removal a signed ``retired``
record, never a tombstone. A change that loosens decisions waits for a second
analyst: ``approve ID`` signs it again and republishes it (:mod:`rules.approval`).
Every change is first written to the append-only ``rules-audit`` topic
(:mod:`rules.audit`). ``keygen ANALYST`` makes a key pair and prints how to trust
it. See ``docs/rules-security.md``.

New rules and list entries get ``valid_from = now + --effective-in`` (default
60 s) unless the file sets one, so that every worker has applied them before
the first transaction they judge: decisions depend on event time, not on when
a worker read the record.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from rules.audit import ApprovalError, Change, changes
from rules.book import Applied, Message, Refused, RuleBook
from rules.contracts import LISTS_TOPIC, RULES_TOPIC, ListEntry, Rule
from rules.cost import CostBudget
from rules.errors import RulesFileError
from rules.signing import DEV_KEYS_DIR, Signer, SigningKeyError, TrustedKeys
from topics.errors import BrokerError, FraudStreamError
from topics.registry import TOPICS
from topics.settings import BOOTSTRAP_ENV, KafkaSettings

EXIT_BAD_INPUT = 2
AUDIT_TOPIC = TOPICS["rules-audit"]


class Refusals(FraudStreamError):
    """Validation refused some items; nothing was published."""


def ensure_topics(settings: KafkaSettings) -> tuple[str, str]:
    """Create ``rules``, ``lists`` (compacted) and ``rules-audit`` if missing.

    Returns the names of ``rules`` and ``lists``.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    from topics.admin import topic_partitions

    names = (settings.topic(RULES_TOPIC.logical), settings.topic(LISTS_TOPIC.logical))
    existing = topic_partitions(settings)
    missing = [
        NewTopic(name, num_partitions=spec.partitions, config=dict(spec.config))
        for name, spec in zip((*names, settings.topic(AUDIT_TOPIC.logical)),
                              (RULES_TOPIC, LISTS_TOPIC, AUDIT_TOPIC), strict=True)
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


def trusted_keys(env: Mapping[str, str] | None = None) -> TrustedKeys:
    """The analysts the flow trusts (``FRAUD_RULES_TRUSTED_KEYS``, default the dev keys')."""
    from rules.signing import dev_keys, load_trusted

    env = os.environ if env is None else env
    path = env.get("FRAUD_RULES_TRUSTED_KEYS", "").strip()
    return load_trusted(path) if path else TrustedKeys.from_file(dev_keys().trusted)


def signer(key: Path | None, analyst: str | None, *, checker: bool = False) -> Signer:
    """The analyst signing this command: ``--key`` (``--analyst``, default the file's stem).

    Without ``--key``: the dev maker (``approve``: the dev checker) key, made on first
    use under ``.dev/rules-keys/``; only the dev flow trusts it.
    """
    from rules.signing import dev_keys

    if key is not None:
        return Signer.from_file(key, analyst)
    dev = dev_keys()
    chosen = dev.checker if checker else dev.maker
    print(f"signing as {chosen.analyst} with the dev key in {DEV_KEYS_DIR}/ (trusted by the "
          "dev flow only; give --key for yours)", file=sys.stderr)
    return chosen


def cost_budget() -> CostBudget:
    """The flow's rule cost limits, from the same ``FRAUD_RULE*`` variables (rules/cost.py).

    The publisher refuses what the flow would refuse: a rule over ``FRAUD_RULE_COST_US``
    per transaction (``rule_too_costly``) or beyond ``FRAUD_RULES_MAX`` rules in force.
    """
    import os

    from flows.settings import rule_budget

    return rule_budget(os.environ)


def _costs(book: RuleBook) -> str:
    """``; costliest <id> <µs> µs per transaction (budget <µs> µs)`` for the validate line."""
    measured = [c for c in book.compiled() if c.cost is not None]
    if not measured:
        return ""
    top = max(measured, key=lambda c: c.cost.row_us if c.cost is not None else 0.0)
    assert top.cost is not None
    return (f"; costliest {top.rule.id} {top.cost.row_us:,.1f} µs per transaction "
            f"(budget {book.budget.row_us:g} µs, FRAUD_RULE_COST_US)")


def unrated_warnings(book: RuleBook) -> list[str]:
    """One warning per enabled rule that reads ``amount_reference`` but not ``amount_unrated``.

    Such a rule never fires for a transaction without a rate (``amount_reference`` is
    NaN: every comparison is false), which is rarely what its author meant.
    """
    from rules.celast import Ident, walk

    out = []
    for c in book.compiled():
        names = {n.name for n in walk(c.tree, loops=True) if isinstance(n, Ident)}
        if "amount_reference" in names and "amount_unrated" not in names:
            out.append(
                f"warning: rule {c.rule.id!r} compares amount_reference but never mentions "
                "amount_unrated: it cannot fire for a currency without a rate (NaN); say "
                "which way with `amount_unrated || ...` or `!amount_unrated && ...`"
            )
    return out


def read_book(settings: KafkaSettings, names: tuple[str, str],
              trust: TrustedKeys | None = None) -> RuleBook:
    """The current state: both compacted topics read to their end into a :class:`RuleBook`.

    ``trust`` (default :func:`trusted_keys`) decides, as in the flow, which records apply.
    """
    from topics.reader import iter_topic

    book = RuleBook(trust=trust if trust is not None else trusted_keys(), budget=cost_budget())
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


def publish_changes(settings: KafkaSettings, names: tuple[str, str],
                    done: Sequence[Change]) -> None:
    """Write the audit entries to ``rules-audit``, then the signed records (write-ahead)."""
    if not done:
        return
    publish(settings, settings.topic(AUDIT_TOPIC.logical), [c.audit_record() for c in done])
    for topic, name in zip(("rules", "lists"), names, strict=True):
        records = [(c.key, c.value) for c in done if c.topic == topic]
        if records:
            publish(settings, name, records)


def _approvals(book: RuleBook, ids: Sequence[str], checker: Signer, reason: str,
               now_ms: int) -> list[Change]:
    from rules.audit import approval

    out = []
    for key in ids:
        topic = "lists" if "/" in key else "rules"
        pending = book.pending.get((topic, key))
        if pending is None:
            raise Refusals(f"{topic} {key!r}: nothing pending (`just rules list` shows what "
                           "waits for a second analyst)")
        out.append(approval(pending, checker, reason=reason, now_ms=now_ms))
    return out


def _keygen(analyst: str, directory: Path) -> int:
    from rules.signing import write_key

    path, public = write_key(analyst, directory)
    print(f"private key: {path} (mode 0600; keep it to yourself, never in the repository)\n"
          "to trust it, add this line under `analysts:` in the flow's trusted keys file "
          "(FRAUD_RULES_TRUSTED_KEYS), reviewed and deployed like code:\n"
          f"  {analyst}: {public}\n"
          f"then sign with: just rules add FILE --key {path}")
    return 0


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
                   "expression", "signed by"):  # fmt: skip
        table.add_column(column, overflow="fold")
    for r in book.rules():
        valid = "-" if r.valid_from is None and r.valid_until is None else (
            f"{iso_ms(r.valid_from) if r.valid_from else '…'} .. "
            f"{iso_ms(r.valid_until) if r.valid_until else '…'}"
        )
        table.add_row(r.id, str(r.version), r.action, r.mode, str(r.priority),
                      "yes" if r.enabled else "no", valid, r.description, r.expression,
                      ", ".join(book.signers.get(f"rules:{r.id}", ())))
    return table


def _pending_table(book: RuleBook) -> Any:
    from rich.table import Table

    table = Table(title="pending: waiting for a second analyst (`just rules approve ID`)")
    for column in ("topic", "id / key", "version", "change", "signed by", "why it needs two"):
        table.add_column(column, overflow="fold")
    for (topic, key), p in sorted(book.pending.items()):
        what = (f"{p.rule.action} {p.rule.mode}{'' if p.rule.enabled else ' disabled'}: "
                f"{p.rule.expression}" if p.rule is not None else p.op)
        table.add_row(topic, key, str(p.rule.version) if p.rule is not None else "-", what,
                      ", ".join(p.signers), p.reason)
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
    remove = sub.add_parser("remove-entries", help="remove the file's list entries with signed "
                                                   "`retired` records (list and value "
                                                   "suffice)")  # fmt: skip
    remove.add_argument("file", type=Path)
    for name, text in (("disable", "publish the next version of rules with enabled: false"),
                       ("delete", "retire rules: a signed next version with enabled: false "
                                  "(a tombstone cannot be signed and is refused)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("ids", nargs="+", metavar="RULE_ID")
    approve = sub.add_parser("approve", help="second analyst (checker): sign pending changes "
                                             "and republish them")  # fmt: skip
    approve.add_argument("ids", nargs="+", metavar="ID",
                         help="rule id, or <list>/<value> of a pending list change")
    for p in sub.choices.values():
        if p.prog.split()[-1] in ("add", "update", "add-entries", "remove-entries", "disable",
                                  "delete", "approve"):
            p.add_argument("--key", type=Path, metavar="PEM",
                           help="your Ed25519 private key (default: the dev key, trusted by "
                           "the dev flow only)")
            p.add_argument("--analyst", metavar="ID",
                           help="your analyst id in the trusted keys (default: the key "
                           "file's name without .pem)")
            p.add_argument("--reason", default="", metavar="TEXT",
                           help="why: kept in the rules-audit trail")
    keygen = sub.add_parser("keygen", help="make an analyst's Ed25519 key pair and print the "
                                           "line that trusts it; no broker")  # fmt: skip
    keygen.add_argument("analyst", metavar="ANALYST")
    sub.add_parser("dev-keys", help="make the dev analysts' keys under .dev/rules-keys/ if "
                                    "missing (the dev flow trusts them); no broker")
    keygen.add_argument("--dir", type=Path, default=Path.home() / ".fraudstream" / "keys",
                        help="where the private key goes (default ~/.fraudstream/keys)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:  # noqa: C901 - one branch per sub-command
    """Entry point of ``python -m rules.cli``."""
    from devkit.broker import connect
    from devkit.cli import table_console
    from rules.files import read_rules_file

    args = _parse_args(argv)
    console = table_console()
    try:
        if args.command == "keygen":
            return _keygen(args.analyst, args.dir)
        if args.command == "dev-keys":
            from rules.signing import dev_keys

            keys = dev_keys()
            print(f"dev analysts {keys.maker.analyst} and {keys.checker.analyst}; the dev flow "
                  f"trusts {keys.trusted} (FRAUD_RULES_TRUSTED_KEYS default)")
            return 0
        if args.command == "validate":
            doc = read_rules_file(args.file)
            book = RuleBook(budget=cost_budget())
            for entry in doc.entry_objects():
                book.put_entry(entry)
            _check(book.put_rule(r) for r in doc.rule_objects())
            for warning in unrated_warnings(book):
                print(warning, file=sys.stderr)
            print(f"{args.file}: {len(doc.rules)} rule(s) and {len(doc.entries)} entr(ies) valid; "
                  f"{sum(c.fast is None for c in book.compiled())} evaluated row by row"
                  f"{_costs(book)}")
            return 0
        given = read_rules_file(args.file) if hasattr(args, "file") else None
        with connect(quiet=True) as settings:
            names = ensure_topics(settings)
            book = read_book(settings, names)
            rules_topic, lists_topic = names
            if args.command == "list":
                console.print(_rules_table(book))
                if book.pending:
                    console.print(_pending_table(book))
                if args.entries:
                    console.print(_entries_table(book))
                return 0
            lead = int(getattr(args, "effective_in", 0) * 1000)
            now_ms = int(time.time() * 1000)
            entries: list[ListEntry] = []
            rules: list[Rule] = []
            retired: list[ListEntry] = []
            approvals: list[Change] = []
            who = signer(args.key, args.analyst, checker=args.command == "approve")
            if args.command == "approve":
                approvals = _approvals(book, args.ids, who, args.reason, now_ms)
            elif given is not None and args.command in ("add", "update", "add-entries"):
                given.entries = _stamp(given.entries, lead)
                entries = given.entry_objects()
                if args.command != "add-entries":
                    rules = plan_rules(book, _stamp(given.rules, lead),
                                       update=args.command == "update")  # fmt: skip
            elif given is not None and args.command == "remove-entries":
                for i, item in enumerate(given.entries):
                    if not item.get("list") or item.get("value") is None:
                        raise Refusals(f"lists[{i}]: give `list` and `value`")
                    found = book.lists.get(str(item["list"]), str(item["value"]))
                    if found is None:
                        raise Refusals(f"lists[{i}]: {item['list']}/{item['value']} is not in "
                                       "force; nothing to remove")
                    retired.append(found)
            elif args.command in ("disable", "delete"):
                current = {r.id: r for r in book.rules()}
                unknown = [i for i in args.ids if i not in current]
                if unknown:
                    raise Refusals(f"no such rule(s): {', '.join(unknown)}")
                for rule_id in args.ids:
                    rule = current[rule_id]
                    rules.append(msgspec.structs.replace(rule, version=rule.version + 1,
                                                         enabled=False))
            done = [*approvals, *changes(
                book, args.command,
                [*((e, False) for e in entries), *((e, True) for e in retired),
                 *((r, False) for r in rules)], who, reason=args.reason, now_ms=now_ms)]
            publish_changes(settings, (rules_topic, lists_topic), done)
            for change in done:
                if change.audit.outcome == "pending":
                    print(f"{change.topic} {change.key}: pending, signed by "
                          f"{', '.join(change.audit.signers)}; it {change.audit.loosens}, so "
                          "a second analyst must approve it: just rules approve "
                          f"{change.key} --key <their key>", file=sys.stderr)
            print(f"published {len(done)} signed record(s) to {rules_topic}/{lists_topic} as "
                  f"{who.analyst} on {settings.bootstrap_servers}", file=sys.stderr)
            return 0
    except (Refusals, RulesFileError, SigningKeyError, ApprovalError) as exc:
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
