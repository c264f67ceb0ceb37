"""Signed changes and their audit trail: what the publisher (``just rules``) writes.

A :class:`Change` is one ``rules`` or ``lists`` record, signed
(:mod:`rules.signing`), with its :class:`~topics.contracts.RuleAudit` entry for
the append-only ``rules-audit`` topic (never compacted, kept forever): who
signed, when, the command, the exact record and its SHA-256, the analyst's
reason, and whether it takes effect or waits for a second analyst
(:mod:`rules.approval`). The publisher writes the audit entries **before** the
records (write-ahead): an entry without its effect is harmless, an effect
without its entry is not. What the flow refuses is on ``dead-letter`` and in
``fraud_rule_changes_total``; together the two topics are the history, also of
a rule whose record compaction has dropped.

>>> import tempfile
>>> from rules.book import RuleBook
>>> from rules.signing import dev_keys
>>> keys = dev_keys(tempfile.mkdtemp())
>>> rule = Rule(id="vip", version=1, description="vip", owner="fraud-ops",
...             expression="amount >= 0.0", action="approve")
>>> change = changes(RuleBook(), "add", [(rule, False)], keys.maker, reason="test", now_ms=1)[0]
>>> change.audit.outcome, change.audit.signers, change.audit.loosens
('pending', ['dev-maker'], 'an active approve rule overrides the model')
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import msgspec

from rules.approval import CHECKERS_NEEDED, Pending, entry_loosens, rule_loosens
from rules.book import RuleBook
from rules.signing import Signature, Signer, attach, signed_bytes
from topics.contracts import ListEntry, Rule, RuleAudit

Command = Literal["add", "update", "disable", "delete", "approve", "add-entries",
                  "remove-entries"]


@dataclass(frozen=True)
class Change:
    """One signed record to publish (``key``, ``value``) and its audit entry."""

    topic: Literal["rules", "lists"]
    key: str
    value: bytes
    audit: RuleAudit

    def audit_record(self) -> tuple[str, bytes]:
        """``(key, value)`` of the ``rules-audit`` record: key ``<topic>/<key>``."""
        return f"{self.topic}/{self.key}", msgspec.json.encode(self.audit)


def _change(command: Command, content: Rule | ListEntry, retired: bool,
            signatures: Sequence[Signature], analyst: str, loosens: str | None,
            reason: str, now_ms: int) -> Change:
    topic: Literal["rules", "lists"] = "rules" if isinstance(content, Rule) else "lists"
    key = content.id if isinstance(content, Rule) else f"{content.list}/{content.value}"
    value = attach(content, signatures, retired=retired)
    signers = list(dict.fromkeys(s.analyst for s in signatures))
    outcome: Literal["in_force", "pending"] = (
        "pending" if loosens is not None and len(signers) < CHECKERS_NEEDED else "in_force")
    return Change(topic, key, value, RuleAudit(
        time=now_ms, analyst=analyst, command=command, topic=topic, key=key,
        version=content.version if isinstance(content, Rule) else None, outcome=outcome,
        signers=signers, loosens=loosens or "", reason=reason, value=value.decode(),
        value_sha256=hashlib.sha256(value).hexdigest(),
    ))


def changes(book: RuleBook, command: Command, items: Sequence[tuple[Rule | ListEntry, bool]],
            signer: Signer, *, reason: str, now_ms: int,
            cosigners: Sequence[Signer] = ()) -> list[Change]:
    """Sign ``(content, retired)`` items as ``signer`` against the state in ``book``.

    ``cosigners`` sign too (the dev demo and tests stand for a maker and a checker).

    Whether an item loosens decisions is judged against ``book`` (the topics as
    read back) by :mod:`rules.approval`, the same judgement the flow makes.
    """
    current = {r.id: r for r in book.rules()}
    allow, block = book.list_users()
    out = []
    for content, retired in items:
        if isinstance(content, Rule):
            topic, key = "rules", content.id
            loosens = rule_loosens(current.get(content.id), content)
        else:
            topic, key = "lists", f"{content.list}/{content.value}"
            loosens = entry_loosens(content, retired, allow, block)
        message = signed_bytes(topic, key, content, "retire" if retired else "put")
        signatures = [s.sign(message) for s in (signer, *cosigners)]
        out.append(_change(command, content, retired, signatures, signer.analyst, loosens,
                           reason, now_ms))
    return out


class ApprovalError(ValueError):
    """A pending change cannot be approved by this analyst; the message says why."""


def approval(pending: Pending, checker: Signer, *, reason: str, now_ms: int) -> Change:
    """The pending change with ``checker``'s signature added (the second analyst's).

    Raises :class:`ApprovalError` when ``checker`` already signed it (maker-checker
    needs two distinct analysts).
    """
    if checker.analyst in pending.signers:
        raise ApprovalError(
            f"{pending.topic} {pending.key!r}: {checker.analyst!r} already signed it; a "
            "second, distinct analyst must approve (maker-checker)")
    content: Rule | ListEntry | None = pending.rule if pending.rule is not None else pending.entry
    assert content is not None
    signature = checker.sign(signed_bytes(pending.topic, pending.key, content, pending.op))
    return _change("approve", content, pending.op == "retire",
                   [*pending.signatures, signature], checker.analyst, pending.reason, reason,
                   now_ms)
