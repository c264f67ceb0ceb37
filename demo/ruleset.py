"""The analyst rules and lists the demo publishes before the stream starts.

The rules and list entries of a rules file (default: the common fraud policies of
``rules/examples/policies.yaml``: velocity, card testing, geography, impossible
travel, amount spike in shadow mode, BIN, device and IP, blocklist, allowlist,
tag) plus the demo's own blocklist (:func:`demo.world.reported_cards`), checked
and published the way ``python -m rules.cli add`` does (:mod:`rules.cli`): every
item is validated against the running feature spec first, and nothing is
published when one is refused. No ``valid_from`` is added, so a rule is in force
for every event time of the simulated world (its event times are in the past).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import rules
from rules.audit import changes
from rules.book import RuleBook
from rules.cli import plan_rules, publish_changes
from rules.files import read_rules_file
from rules.signing import dev_keys
from topics.contracts import ListEntry, Rule
from topics.settings import KafkaSettings

#: The rules file published when the command line names none.
DEFAULT_RULES = Path(rules.__file__).resolve().parent / "examples" / "policies.yaml"


@dataclasses.dataclass(frozen=True)
class RuleSet:
    """What the demo publishes: rules, list entries, and the rule-set version they make."""

    source: Path
    rules: list[Rule]
    entries: list[ListEntry]
    version: str  # RuleBook.version of these records: what every verdict will name

    @property
    def modes(self) -> dict[str, str]:
        """Rule id -> ``active`` or ``shadow``."""
        return {r.id: r.mode for r in self.rules}


def load(path: Path, extra_entries: list[ListEntry]) -> RuleSet:
    """Read and check ``path`` plus ``extra_entries`` against an empty rule book.

    Raises :class:`rules.errors.RulesFileError` (unreadable file, a bad item) or
    :class:`rules.cli.Refusals` (a rule that does not compile, listing the reasons).
    """
    doc = read_rules_file(path)
    book = RuleBook()
    entries = [*doc.entry_objects(), *extra_entries]
    for entry in entries:
        book.put_entry(entry)
    planned = plan_rules(book, doc.rules, update=False)  # checked into ``book``
    return RuleSet(path, planned, entries, book.version)


def publish_rule_set(settings: KafkaSettings, rule_set: RuleSet) -> None:
    """Publish the entries to ``lists``, then the rules to ``rules``; wait for every ack.

    Every record is signed by the two dev analysts (maker and checker, keys made on
    first use under ``.dev/rules-keys/``, trusted by the dev flow), so the allowlist
    rule is in force at once; the audit entries go to ``rules-audit`` first.
    Raises :class:`topics.errors.BrokerError` when a record is not acknowledged.
    """
    keys = dev_keys()
    names = (settings.topic("rules"), settings.topic("lists"))
    now_ms = int(time.time() * 1000)
    entries = changes(RuleBook(), "add-entries", [(e, False) for e in rule_set.entries],
                      keys.maker, reason="demo rule set", now_ms=now_ms, cosigners=[keys.checker])
    publish_changes(settings, names, entries)  # lists first: rules name them
    book = RuleBook()
    for entry in rule_set.entries:
        book.put_entry(entry)
    publish_changes(settings, names, changes(
        book, "add", [(r, False) for r in rule_set.rules], keys.maker,
        reason="demo rule set", now_ms=now_ms, cosigners=[keys.checker]))
