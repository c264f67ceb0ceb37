"""Read rules and list entries from a YAML or JSON file (the CLI's and the backtest's input).

The file is either a list of rules, or a mapping with ``rules:`` and/or
``lists:`` (a list of entries). Each item is checked against its contract;
errors name the file, the item and the field. ``version`` may be left out of a
rule: the caller decides (1 for a new rule, the next version for an update).

.. code-block:: yaml

    rules:
      - id: velocity-new-country
        description: e-commerce over 1,000 EUR in a new country after a burst
        owner: fraud-ops
        expression: >-
          channel == "ecom" && amount_reference > 1000.0
          && card_country_changed > 0.5 && card_count_10m > 3.0
        action: decline
    lists:
      - {list: blocked_cards, kind: card_id, value: c-123, reason: chargeback ring}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from rules.contracts import (
    ENTRY_TIME_FIELDS,
    RULE_TIME_FIELDS,
    ContractError,
    ListEntry,
    Rule,
    entry_from_obj,
    rule_from_obj,
)
from rules.errors import RulesFileError


@dataclass
class RulesFile:
    """The raw items of a file (``version`` possibly missing) and where they came from."""

    source: str
    rules: list[dict[str, Any]] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)

    def rule_objects(self, default_version: int | None = 1) -> list[Rule]:
        """Rules, ``version`` defaulted; raises :class:`RulesFileError` naming the item."""
        out = []
        for i, raw in enumerate(self.rules):
            obj = dict(raw)
            if "version" not in obj and default_version is not None:
                obj["version"] = default_version
            out.append(self._convert(rule_from_obj, obj, f"rules[{i}]"))
        return out

    def entry_objects(self) -> list[ListEntry]:
        """List entries; raises :class:`RulesFileError` naming the item."""
        return [
            self._convert(entry_from_obj, raw, f"lists[{i}]") for i, raw in enumerate(self.entries)
        ]

    def _convert(self, convert: Any, obj: dict[str, Any], where: str) -> Any:
        label = f"{where} ({obj.get('id') or obj.get('value') or '?'})"
        try:
            return convert(obj)
        except ContractError as exc:
            raise RulesFileError(f"{self.source}: {label}: {exc}") from None


def _times(obj: Any, fields: tuple[str, ...], where: str) -> Any:
    """YAML turns unquoted timestamps into datetimes: make them epoch ms (UTC required)."""
    if not isinstance(obj, dict):
        raise RulesFileError(f"{where}: expected a mapping, got {type(obj).__name__}")
    out = dict(obj)
    for name in fields:
        value = out.get(name)
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise RulesFileError(f"{where}: {name}: add a UTC offset (Z or +hh:mm)")
            out[name] = round(value.timestamp() * 1000)
        elif isinstance(value, date):
            raise RulesFileError(f"{where}: {name}: give a time with an offset, not a date")
    return out


def read_rules_file(path: str | Path) -> RulesFile:
    """Parse ``path`` (``.yaml``/``.yml``/``.json``); raises :class:`RulesFileError`."""
    import yaml  # JSON is YAML 1.2; PyYAML reads both

    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesFileError(f"{source}: cannot read ({exc.strerror})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RulesFileError(f"{source}: not valid YAML/JSON: {exc}") from None
    if isinstance(doc, list):
        doc = {"rules": doc}
    if not isinstance(doc, dict) or not set(doc) <= {"rules", "lists"}:
        raise RulesFileError(
            f"{source}: expected a list of rules or a mapping with `rules:` and/or `lists:`"
        )
    rules = doc.get("rules") or []
    entries = doc.get("lists") or []
    if not isinstance(rules, list) or not isinstance(entries, list):
        raise RulesFileError(f"{source}: `rules` and `lists` must be lists")
    return RulesFile(
        source,
        [_times(r, RULE_TIME_FIELDS, f"{source}: rules[{i}]") for i, r in enumerate(rules)],
        [_times(e, ENTRY_TIME_FIELDS, f"{source}: lists[{i}]") for i, e in enumerate(entries)],
    )
