"""Wire contracts of the ``rules`` and ``lists`` topics, and of a rule hit in a verdict.

Both topics are compacted, one partition each, so that the latest message per
key is the state and every reader sees it in one order:

- ``rules``, key = rule id, value = :class:`Rule` as JSON plus ``signatures``;
  a signed version with ``enabled: false`` takes the rule out of force (a
  tombstone is refused: it cannot carry a signature).
- ``lists``, key = ``<list>/<value>`` (e.g. ``blocked_cards/c-123``,
  ``bad_ips/203.0.113.0/24``), value = :class:`ListEntry` as JSON plus
  ``signatures``; the signed entry with ``"retired": true`` removes it.

Every record is signed by trusted analysts (:mod:`rules.signing`, Ed25519) and
loosening changes need two of them (:mod:`rules.approval`).

Times are UTC epoch milliseconds; on the wire ``valid_from``, ``valid_until``,
``expires`` may also be RFC 3339 strings with an offset (normalised on decode).
The structs live with the other wire contracts (:mod:`topics.contracts`, JSON
Schemas in ``topics/schemas/``, ``just schemas``); this module decodes and checks
them (time fields, list values by kind).

>>> rule = decode_rule(b'{"id":"r1","version":1,"description":"blocked card","owner":"ana",'
...                    b'"expression":"card_id in lists.blocked_cards","action":"decline",'
...                    b'"valid_from":"2025-01-01T00:00:00Z"}')
>>> rule.valid_from, rule.mode, rule.enabled
(1735689600000, 'active', True)
>>> list_key(ListEntry(list="bad_ips", kind="ip_range", value="203.0.113.0/24"))
'bad_ips/203.0.113.0/24'
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

import msgspec

from topics.contracts import (
    ENTRY_TIME_FIELDS,
    RULE_TIME_FIELDS,
    ListEntry,
    ListKind,
    ListName,
    Rule,
    RuleAction,
    RuleHit,
    RuleId,
    RuleMode,
)
from topics.registry import TOPICS
from topics.validation import parse_time_ms

Action = RuleAction
Mode = RuleMode
Decision = Literal["approve", "review", "decline"]


def list_key(entry: ListEntry) -> str:
    """The ``lists`` topic key of an entry: ``<list>/<value>``."""
    return f"{entry.list}/{entry.value}"


class ContractError(ValueError):
    """A rule or list message does not match its contract; ``reason`` says which field."""


_DIGITS = re.compile(r"^[0-9]{1,8}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")


def _normalise_times(obj: dict[str, Any], fields: tuple[str, ...]) -> None:
    for field in fields:
        value = obj.get(field)
        if value is not None:
            try:
                obj[field] = parse_time_ms(field, value)
            except ValueError as exc:
                raise ContractError(str(exc)) from None


def _convert(obj: Any, kind: type[msgspec.Struct], fields: tuple[str, ...]) -> Any:
    if not isinstance(obj, dict):
        raise ContractError(f"expected a JSON object, got {type(obj).__name__}")
    obj = dict(obj)
    _normalise_times(obj, fields)
    try:
        return msgspec.convert(obj, kind, strict=True)
    except msgspec.ValidationError as exc:
        raise ContractError(str(exc).replace(" - at `$.", " at `")) from None


def rule_from_obj(obj: Any) -> Rule:
    """A :class:`Rule` from decoded JSON/YAML; raises :class:`ContractError` with the field."""
    rule: Rule = _convert(obj, Rule, RULE_TIME_FIELDS)
    if (
        rule.valid_from is not None
        and rule.valid_until is not None
        and rule.valid_until <= rule.valid_from
    ):
        raise ContractError("valid_until must be later than valid_from")
    return rule


def entry_from_obj(obj: Any) -> ListEntry:
    """A :class:`ListEntry` from decoded JSON/YAML, its value checked against its kind."""
    entry: ListEntry = _convert(obj, ListEntry, ENTRY_TIME_FIELDS)
    value = entry.value
    if entry.kind == "ip_range":
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ContractError(
                f"value: {value!r} is not an IP address or CIDR range (e.g. 203.0.113.0/24)"
            ) from None
    elif entry.kind == "bin_prefix" and not _DIGITS.match(value):
        raise ContractError(f"value: {value!r} is not a BIN prefix of 1-8 digits")
    elif entry.kind == "country" and not _COUNTRY.match(value):
        raise ContractError(f"value: {value!r} is not an ISO 3166-1 alpha-2 code (e.g. FR)")
    if (
        entry.valid_from is not None
        and entry.expires is not None
        and entry.expires <= entry.valid_from
    ):
        raise ContractError("expires must be later than valid_from")
    return entry


def decode_json(value: bytes | str) -> Any:
    """A record value's JSON; raises :class:`ContractError` when it is not JSON."""
    try:
        return msgspec.json.decode(value)
    except msgspec.DecodeError as exc:
        raise ContractError(f"not valid JSON: {exc}") from None


def decode_rule(value: bytes | str) -> Rule:
    """Decode a ``rules`` record value; raises :class:`ContractError`."""
    return rule_from_obj(decode_json(value))


def decode_entry(value: bytes | str) -> ListEntry:
    """Decode a ``lists`` record value; raises :class:`ContractError`."""
    return entry_from_obj(decode_json(value))


#: The two topics (``topics.registry``: compacted, one partition: one order for every reader).
RULES_TOPIC = TOPICS["rules"]
LISTS_TOPIC = TOPICS["lists"]

__all__ = ["ENTRY_TIME_FIELDS", "RULE_TIME_FIELDS", "Action", "ContractError", "Decision",
           "ListEntry", "ListKind", "ListName", "Mode", "Rule", "RuleHit", "RuleId",
           "decode_entry", "decode_json", "decode_rule", "entry_from_obj", "list_key",
           "rule_from_obj"]
