"""Wire contracts of the ``rules`` and ``lists`` topics, and of a rule hit in a verdict.

Both topics are compacted, one partition each, so that the latest message per
key is the state and every reader sees it in one order:

- ``rules``, key = rule id, value = :class:`Rule` as JSON; a tombstone (null
  value) or ``enabled: false`` takes the rule out of force.
- ``lists``, key = ``<list>/<value>`` (e.g. ``blocked_cards/c-123``,
  ``bad_ips/203.0.113.0/24``), value = :class:`ListEntry` as JSON; a tombstone
  removes the entry.

Times are UTC epoch milliseconds; on the wire ``valid_from``, ``valid_until``,
``expires`` may also be RFC 3339 strings with an offset (normalised on decode).
The JSON Schemas in ``rules/schemas/`` are generated from these classes
(``python -m rules.schema``; ``--check`` fails when they are stale).

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
from types import MappingProxyType
from typing import Annotated, Any, Literal

import msgspec

from topics.contracts import EpochMs
from topics.registry import TopicSpec
from topics.validation import parse_time_ms

RuleId = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$",
        description="Stable rule id: letters, digits, `_.:-`, at most 64 characters.",
    ),
]
ListName = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[a-z][a-z0-9_]{0,63}$",
        description="List name as used in expressions (`lists.<name>`): lower case, digits, `_`.",
    ),
]
Action = Literal["decline", "review", "approve", "tag"]
Mode = Literal["active", "shadow"]
ListKind = Literal["card_id", "merchant_id", "device_id", "ip_range", "bin_prefix", "country"]
Decision = Literal["approve", "review", "decline"]

#: Fields that may arrive as RFC 3339 strings and are normalised to epoch ms.
RULE_TIME_FIELDS = ("valid_from", "valid_until")
ENTRY_TIME_FIELDS = ("valid_from", "expires")


class Rule(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True, gc=False):
    """An analyst rule, published to ``rules`` (key: rule id).

    ``expression`` is CEL (https://cel.dev) over the transaction's fields, the
    features by name, ``score``, ``model_decision`` and ``lists`` (see
    :mod:`rules.names`). ``action``: ``decline``, ``review``, ``approve`` (an
    allowlist override of the model) or ``tag`` (recorded only). ``mode``
    ``shadow`` evaluates and counts but never changes a decision. The rule is in
    force for transactions whose event time ``t`` has ``valid_from <= t <
    valid_until`` (either bound optional). A higher ``version`` replaces a lower
    one; ``description`` is the analyst-readable reason shown in verdicts.
    """

    id: RuleId
    version: Annotated[int, msgspec.Meta(ge=1, description="Increases with every change.")]
    description: Annotated[
        str, msgspec.Meta(min_length=1, max_length=500, description="Reason shown to analysts.")
    ]
    owner: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    expression: Annotated[str, msgspec.Meta(min_length=1, max_length=4000)]
    action: Action
    mode: Mode = "active"
    priority: Annotated[
        int, msgspec.Meta(description="Higher first when several rules hit; then id.")
    ] = 0
    valid_from: EpochMs | None = None
    valid_until: EpochMs | None = None
    enabled: bool = True
    schema_version: int = 1

    SCHEMA_VERSION = 1
    WIRE_TIME_FIELDS = RULE_TIME_FIELDS


class ListEntry(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True, gc=False):
    """One member of a named list, published to ``lists`` (key: ``<list>/<value>``).

    How ``value`` matches depends on ``kind``: equal text for ``card_id``,
    ``merchant_id``, ``device_id`` and ``country`` (ISO 3166-1 alpha-2); the
    address inside the network for ``ip_range`` (CIDR, RFC 4632; IPv4 or IPv6; a
    bare address is a /32 or /128); a prefix of the card's BIN for
    ``bin_prefix`` (1-8 digits, ISO/IEC 7812). The entry is in force for event
    times ``valid_from <= t < expires`` (either bound optional).
    """

    list: ListName
    kind: ListKind
    value: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    expires: EpochMs | None = None
    valid_from: EpochMs | None = None
    added_by: Annotated[str, msgspec.Meta(max_length=128)] = ""
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""
    schema_version: int = 1

    SCHEMA_VERSION = 1
    WIRE_TIME_FIELDS = ENTRY_TIME_FIELDS


class RuleHit(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True, gc=False):
    """A rule that matched a transaction, as a verdict carries it (a reason code in words)."""

    rule_id: str
    version: int
    action: Action
    mode: Mode
    text: str


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


def _json(value: bytes | str) -> Any:
    try:
        return msgspec.json.decode(value)
    except msgspec.DecodeError as exc:
        raise ContractError(f"not valid JSON: {exc}") from None


def decode_rule(value: bytes | str) -> Rule:
    """Decode a ``rules`` record value; raises :class:`ContractError`."""
    return rule_from_obj(_json(value))


def decode_entry(value: bytes | str) -> ListEntry:
    """Decode a ``lists`` record value; raises :class:`ContractError`."""
    return entry_from_obj(_json(value))


_COMPACT = MappingProxyType(
    {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "delete.retention.ms": str(
        7 * 24 * 3600 * 1000
    )}
)

#: The two topics, for ``topics.registry.TOPICS`` (one partition: one order for every reader).
RULES_TOPIC = TopicSpec(
    "rules", Rule, key="rule id", partitions=1, config=_COMPACT,
    description="Analyst rules (CEL), compacted: the latest version per rule id.",
)  # fmt: skip
LISTS_TOPIC = TopicSpec(
    "lists", ListEntry, key="<list>/<value>", partitions=1, config=_COMPACT,
    description="Analyst list entries (blocklists, allowlists), compacted.",
)  # fmt: skip
