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
from pathlib import Path

import msgspec

import rules
from rules.book import RuleBook
from rules.cli import plan_rules, publish
from rules.contracts import list_key
from rules.files import read_rules_file
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

    Raises :class:`topics.errors.BrokerError` when a record is not acknowledged.
    """
    publish(settings, settings.topic("lists"),
            [(list_key(e), msgspec.json.encode(e)) for e in rule_set.entries])  # fmt: skip
    publish(settings, settings.topic("rules"),
            [(r.id, msgspec.json.encode(r)) for r in rule_set.rules])  # fmt: skip
