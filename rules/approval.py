"""Who may change what: authentication and two-person approval of rule and list records.

A record is **authenticated** when at least one trusted analyst signed its
canonical bytes (:func:`rules.signing.signed_bytes`); otherwise it is refused
(``rule_unauthenticated`` / ``list_unauthenticated``), and so is every
tombstone (a null value cannot carry a signature: retire a rule with a signed
``enabled: false`` version, remove a list entry with a signed ``retired`` record).

A change that **loosens** decisions takes effect only with the signatures of
two distinct trusted analysts (maker-checker, the four-eyes principle of
PCI DSS req. 6.5.1 change control and of payment-operations practice); with
one it is **pending**: kept, listed, changing no verdict. The strength of a
rule's effect orders ``decline`` > ``review`` > no effect (``tag``, ``shadow``
mode, disabled) > ``approve``; a change loosens when (:func:`rule_loosens`)

- the rule is (or becomes) an active ``approve`` rule;
- its strength falls (a decline becomes a review, a review rule is disabled,
  retired or put in shadow mode);
- it changes the expression or validity window of an active ``decline`` or
  ``review`` rule (a changed condition can match fewer transactions).

A list change loosens (:func:`entry_loosens`) when it adds to a list an active
approve rule names (an allowlist), or removes from a list an active decline or
review rule names (a blocklist).

>>> from topics.contracts import Rule
>>> r = Rule(id="r", version=1, description="d", owner="o", expression="amount > 1.0",
...          action="decline")
>>> rule_loosens(None, r) is None
True
>>> rule_loosens(r, msgspec.structs.replace(r, version=2, action="review"))
'lowers decline to review'
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

import msgspec

from rules.signing import Op, Signature, TrustedKeys, signed_bytes
from topics.contracts import ListEntry, Rule

AuthClass = Literal["rule_unauthenticated", "list_unauthenticated"]
#: Distinct trusted analysts a loosening change needs.
CHECKERS_NEEDED = 2
_STRENGTH = {"decline": 3, "review": 2, "tag": 1, "approve": 0}


def strength(rule: Rule | None) -> int:
    """3 decline, 2 review, 1 no effect (tag, shadow, disabled, absent), 0 approve."""
    if rule is None or not rule.enabled or rule.mode != "active":
        return 1
    return _STRENGTH[rule.action]


def rule_loosens(current: Rule | None, new: Rule) -> str | None:
    """Why replacing ``current`` by ``new`` loosens decisions, or None when it does not."""
    before, after = strength(current), strength(new)
    if after == 0:
        return "an active approve rule overrides the model"
    if after < before:
        was = current.action if current is not None else "none"
        now = new.action if after > 1 else ("no effect (disabled, shadow or tag)")
        return f"lowers {was} to {now}"
    if before >= 2 and current is not None and (
        new.expression != current.expression
        or new.valid_from != current.valid_from
        or new.valid_until != current.valid_until
    ):
        return f"changes the condition or validity of an active {current.action} rule"
    return None


def entry_loosens(entry: ListEntry, retired: bool, allow_lists: Collection[str],
                  block_lists: Collection[str]) -> str | None:
    """Why adding (or retiring) ``entry`` loosens decisions, given the lists active rules name.

    ``allow_lists``: lists named by active approve rules; ``block_lists``: by
    active decline or review rules.
    """
    if not retired and entry.list in allow_lists:
        return f"adds to {entry.list!r}, which an active approve rule uses"
    if retired and entry.list in block_lists:
        return f"removes from {entry.list!r}, which an active decline/review rule uses"
    return None


class Pending(msgspec.Struct, frozen=True, kw_only=True):
    """A signed change waiting for a second analyst; it changes no verdict meanwhile."""

    topic: Literal["rules", "lists"]
    key: str
    op: Op
    reason: str
    signatures: tuple[Signature, ...]
    signers: tuple[str, ...]
    rule: Rule | None = None
    entry: ListEntry | None = None

    @property
    def author(self) -> str:
        """The analyst who signed first (the maker)."""
        return self.signers[0] if self.signers else "?"


@dataclass(frozen=True)
class Authorised:
    """The record may take effect: the distinct analysts whose signatures are valid."""

    signers: tuple[str, ...]


@dataclass(frozen=True)
class Waiting:
    """Validly signed, but it loosens decisions and has fewer than two analysts."""

    pending: Pending


@dataclass(frozen=True)
class Unauthenticated:
    """No valid trusted signature: the dead letter's class and reason."""

    error_class: AuthClass
    reason: str


def authorise(
    trust: TrustedKeys,
    topic: Literal["rules", "lists"],
    key: str,
    content: Rule | ListEntry,
    signatures: Sequence[Signature],
    op: Op,
    loosens: str | None,
) -> Authorised | Waiting | Unauthenticated:
    """Check ``signatures`` of record ``key``; decide whether it applies, waits or is refused."""
    error_class: AuthClass = "rule_unauthenticated" if topic == "rules" else "list_unauthenticated"
    what = f"rule {key!r}" if topic == "rules" else f"list entry {key!r}"
    if not signatures:
        return Unauthenticated(error_class, f"{what} is not signed; publish it with `just rules` "
                               "(it signs with your analyst key); nothing changed")
    check = trust.verify(signed_bytes(topic, key, content, op), signatures)
    if not check.valid:
        return Unauthenticated(error_class, f"{what} has no valid signature of a trusted "
                               f"analyst ({'; '.join(check.problems)}); nothing changed")
    if loosens is not None and len(check.valid) < CHECKERS_NEEDED:
        return Waiting(Pending(
            topic=topic, key=key, op=op, reason=loosens, signers=check.valid,
            signatures=tuple(s for s in signatures if s.analyst in check.valid),
            rule=content if isinstance(content, Rule) else None,
            entry=content if isinstance(content, ListEntry) else None,
        ))
    return Authorised(check.valid)
