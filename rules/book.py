"""The rule book: rules and lists in force, fed by the ``rules`` and ``lists`` topics.

This is the one object the flow holds (per worker or per state shard). It

- **applies** messages idempotently: a rule by id and version (a lower version
  is stale and ignored, the same version with another body is refused, a
  tombstone removes), a list entry by ``<list>/<value>`` (a tombstone removes);
  a message at or below the last applied offset of its topic is skipped, so
  re-reading a topic after a recovery changes nothing. A refused message leaves
  the previous version in force and returns the reason for the dead letter;
  nothing raises into the flow;
- **evaluates** a batch (:class:`~rules.batch.RuleBatch`) into an
  :class:`Outcome`: which rules hit which rows (per action and mode, and as
  analyst-readable reason codes), per-rule counts for metrics, and the rule-set
  version (the decision policy that combines them with the model's decision is
  the scoring room's, :mod:`scoring.policy`); what is in force is judged on each
  transaction's **event time** (``valid_from``/``valid_until``, list
  ``valid_from``/``expires``), so a replay gives the same answer;
- has a **version**, a deterministic id of the rule versions in force and the
  list entries (the same messages give the same version on every worker), and
  (version, event time) fixes what applied to a transaction;
- is **snapshotted** to bytes and **restored** (for the flow's recovery state).

>>> book = RuleBook(feature_names=("card_count_10m", "amount"))
>>> book.apply(Message("lists", b"blocked_cards/c1",
...     b'{"list":"blocked_cards","kind":"card_id","value":"c1"}')).change
'added'
>>> book.apply(Message("rules", b"r1", b'{"id":"r1","version":1,"description":"blocked card",'
...     b'"owner":"ana","expression":"card_id in lists.blocked_cards","action":"decline"}')).change
'added'
>>> bad = book.apply(Message("rules", b"r2", b'{"id":"r2","version":1,"description":"x",'
...     b'"owner":"ana","expression":"card_count_10m > nope","action":"review"}'))
>>> bad.error_class, "undeclared reference to 'nope'" in bad.reason
('rule_compile', True)
>>> RuleBook.restore(book.snapshot()).version == book.version
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import msgspec
import numpy as np

from rules import reference
from rules.batch import RuleBatch
from rules.compile import CompiledRule, Refusal, RefusalClass, RuleCompiler
from rules.contracts import (
    ContractError,
    ListEntry,
    Rule,
    RuleHit,
    decode_entry,
    decode_rule,
    list_key,
)
from rules.errors import SnapshotError
from rules.lists import ListIndex, in_force
from rules.names import Vocabulary, vocabulary
from rules.vector import Columns
from topics.contracts import ReasonCode

Topic = Literal["rules", "lists"]
Change = Literal["added", "updated", "removed", "unchanged", "stale", "replayed"]
_MASK = (1 << 64) - 1
SNAPSHOT_FORMAT = 1


@dataclass(frozen=True)
class Message:
    """One record of the ``rules`` or ``lists`` topic: key, value (None = tombstone), offset."""

    topic: Topic
    key: bytes | str | None
    value: bytes | str | None
    offset: int | None = None


@dataclass(frozen=True)
class Applied:
    """A message was applied (or was a no-op: ``unchanged``, ``stale``, ``replayed``)."""

    topic: Topic
    key: str
    change: Change


@dataclass(frozen=True)
class Refused:
    """A message was not applied; ``error_class`` and ``reason`` go to the dead letter."""

    topic: Topic
    key: str
    error_class: RefusalClass
    reason: str


@dataclass
class Outcome:
    """Which rules hit which rows of one batch (``n`` rows).

    ``model_decision``: ``<U7 [n]``; ``masks[(action, mode)]``: bool ``[n]``, the
    rows an ``action`` rule in ``mode`` (``active``/``shadow``) hit; ``hits[i]``: the
    rule hits of row ``i``, active first, then by priority and id; ``counts``:
    ``(rule_id, mode) -> hits`` and ``errors``: ``rule_id -> rows whose
    evaluation failed`` (both for metrics); ``library_rows``: rule-rows the
    library evaluated row by row (the fast path's misses).
    """

    model_decision: np.ndarray
    masks: dict[tuple[str, str], np.ndarray]
    hits: list[tuple[RuleHit, ...]]
    ruleset_version: str
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    library_rows: int = 0

    def reasons(self, i: int) -> list[ReasonCode]:
        """Row ``i``'s hits as reason codes (``feature = "rule:<id>"``, text = description)."""
        return [
            ReasonCode(
                feature=f"rule:{h.rule_id}",
                text=h.text if h.mode == "active" else f"[shadow] {h.text}",
            )
            for h in self.hits[i]
        ]


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _text(key: bytes | str | None) -> str | None:
    if key is None:
        return None
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else key


class _Snapshot(msgspec.Struct, kw_only=True):
    format: int
    feature_names: list[str]
    rules: list[Rule]
    entries: list[ListEntry]
    offsets: dict[str, int]


class RuleBook:
    """Rules and lists in force, compiled for one feature spec (``state.spec`` by default)."""

    def __init__(self, feature_names: Sequence[str] | None = None) -> None:
        self.vocab: Vocabulary = vocabulary(feature_names)
        self._compiler = RuleCompiler(self.vocab)
        self._rules: dict[str, Rule] = {}
        self._compiled: dict[str, CompiledRule] = {}
        self._order: list[CompiledRule] = []
        self._hit_of: dict[str, RuleHit] = {}
        self.lists = ListIndex()
        self._rule_sum = 0
        self._list_sum = 0
        self.offsets: dict[str, int] = {}
        #: Rules of a restored snapshot that no longer compile (kept, out of force).
        self.restore_refusals: list[Refused] = []

    # ---- state -----------------------------------------------------------------------------

    @property
    def version(self) -> str:
        """Deterministic id of the enabled rule versions and list entries (``rs-`` + 12 hex)."""
        both = self._rule_sum.to_bytes(8, "big") + self._list_sum.to_bytes(8, "big")
        return "rs-" + hashlib.blake2b(both, digest_size=6).hexdigest()

    def rules(self) -> list[Rule]:
        """Every rule the book holds (enabled or not), by id."""
        return [self._rules[k] for k in sorted(self._rules)]

    @property
    def has_rules(self) -> bool:
        """Whether any enabled rule is compiled (with none, evaluation changes nothing)."""
        return bool(self._order)

    def compiled(self) -> list[CompiledRule]:
        """The enabled, compiled rules in policy order (priority high first, then id)."""
        return list(self._order)

    def in_force(self, t: int) -> tuple[list[Rule], list[ListEntry]]:
        """Rules and list entries that apply to a transaction with event time ``t`` (ms)."""
        rules = [
            c.rule for c in self._order
            if (c.rule.valid_from is None or t >= c.rule.valid_from)
            and (c.rule.valid_until is None or t < c.rule.valid_until)
        ]  # fmt: skip
        return rules, [e for e in self.lists.entries() if in_force(e, t)]

    # ---- apply -----------------------------------------------------------------------------

    def apply(self, message: Message) -> Applied | Refused:
        """Apply one record of ``rules`` or ``lists``; never raises on bad content."""
        key = _text(message.key)
        if message.offset is not None and message.offset <= self.offsets.get(message.topic, -1):
            return Applied(message.topic, key or "", "replayed")
        if message.topic == "rules":
            result = self._apply_rule(key, message.value)
        else:
            result = self._apply_entry(key, message.value)
        if message.offset is not None:
            self.offsets[message.topic] = message.offset
        return result

    def apply_all(self, messages: Iterable[Message]) -> list[Applied | Refused]:
        """Apply messages in order; return each result."""
        return [self.apply(m) for m in messages]

    def _reindex(self) -> None:
        self._order = sorted(self._compiled.values(), key=lambda c: (-c.rule.priority, c.rule.id))
        self._hit_of = {
            c.rule.id: RuleHit(rule_id=c.rule.id, version=c.rule.version, action=c.rule.action,
                               mode=c.rule.mode, text=c.rule.description)
            for c in self._order
        }  # fmt: skip

    def _set_compiled(self, rule_id: str, compiled: CompiledRule | None) -> None:
        old = self._compiled.pop(rule_id, None)
        if old is not None:
            self._rule_sum = (self._rule_sum - _digest(msgspec.json.encode(old.rule))) & _MASK
        if compiled is not None:
            self._compiled[rule_id] = compiled
            self._rule_sum = (self._rule_sum + _digest(msgspec.json.encode(compiled.rule))) & _MASK
        self._reindex()

    def _apply_rule(self, key: str | None, value: bytes | str | None) -> Applied | Refused:
        if not key:
            return Refused("rules", "", "rule_invalid",
                           "a rules record needs the rule id as its key")  # fmt: skip
        if value is None:
            if key not in self._rules:
                return Applied("rules", key, "unchanged")
            del self._rules[key]
            self._set_compiled(key, None)
            return Applied("rules", key, "removed")
        try:
            rule = decode_rule(value)
        except ContractError as exc:
            return Refused("rules", key, "rule_invalid", f"rule {key!r}: {exc}")
        if rule.id != key:
            return Refused("rules", key, "rule_invalid",
                           f"record key {key!r} differs from the rule id {rule.id!r}; "
                           "publish with the rule id as key")  # fmt: skip
        return self.put_rule(rule)

    def put_rule(self, rule: Rule) -> Applied | Refused:
        """Apply a decoded rule (the same checks as a ``rules`` record)."""
        current = self._rules.get(rule.id)
        if current is not None:
            if rule.version < current.version:
                return Applied("rules", rule.id, "stale")
            if rule.version == current.version:
                if rule == current:
                    return Applied("rules", rule.id, "unchanged")
                return Refused("rules", rule.id, "rule_conflict",
                               f"rule {rule.id!r} version {rule.version} is already applied with "
                               f"another body; publish the change as version "
                               f"{current.version + 1}")  # fmt: skip
        compiled = None
        if rule.enabled:
            result = self._compiler.compile(rule)
            if isinstance(result, Refusal):
                return Refused("rules", rule.id, result.error_class, result.reason)
            compiled = result
        self._rules[rule.id] = rule
        self._set_compiled(rule.id, compiled)
        return Applied("rules", rule.id, "added" if current is None else "updated")

    def _apply_entry(self, key: str | None, value: bytes | str | None) -> Applied | Refused:
        if not key or "/" not in key:
            return Refused("lists", key or "", "list_invalid",
                           "a lists record needs the key <list>/<value>")  # fmt: skip
        name, _, member = key.partition("/")
        if value is None:
            old = self.lists.remove(name, member)
            if old is None:
                return Applied("lists", key, "unchanged")
            self._list_sum = (self._list_sum - _digest(msgspec.json.encode(old))) & _MASK
            return Applied("lists", key, "removed")
        try:
            entry = decode_entry(value)
        except ContractError as exc:
            return Refused("lists", key, "list_invalid", f"list entry {key!r}: {exc}")
        if list_key(entry) != key:
            return Refused("lists", key, "list_invalid",
                           f"record key {key!r} differs from {list_key(entry)!r} "
                           "(<list>/<value>)")  # fmt: skip
        return self.put_entry(entry)

    def put_entry(self, entry: ListEntry) -> Applied:
        """Add or replace a decoded list entry."""
        key = list_key(entry)
        old = self.lists.get(entry.list, entry.value)
        if old == entry:
            return Applied("lists", key, "unchanged")
        if old is not None:
            self._list_sum = (self._list_sum - _digest(msgspec.json.encode(old))) & _MASK
        self.lists.put(entry)
        self._list_sum = (self._list_sum + _digest(msgspec.json.encode(entry))) & _MASK
        return Applied("lists", key, "added" if old is None else "updated")

    # ---- evaluate --------------------------------------------------------------------------

    def rule_hits(
        self, batch: RuleBatch, *, use_library: bool = False, honour_validity: bool = True
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
        """Per enabled rule: ``hit [n]`` and ``error [n]`` masks; and rule-rows the library ran.

        ``use_library`` evaluates every rule row by row in the CEL library (the
        reference); ``honour_validity=False`` ignores ``valid_from``/``valid_until``
        (backtests of rules not yet in force). Raises ``ValueError`` when the batch's
        features are not the book's spec.
        """
        if batch.feature_names != self.vocab.feature_names:
            raise ValueError(
                "the batch's feature names differ from the rule book's feature spec; build "
                "the book with the running spec (RuleBook(feature_names=...))"
            )
        cols = Columns(batch, self.lists, self.vocab)
        hits: dict[str, np.ndarray] = {}
        errors: dict[str, np.ndarray] = {}
        library_rows = 0
        t = batch.event_time
        for c in self._order:
            if c.fast is not None and not use_library:
                hit, err = c.fast(cols)
            else:
                hit, err = reference.evaluate(c, batch, self.vocab, self.lists.member)
                library_rows += len(batch)
            rule = c.rule
            if honour_validity and (rule.valid_from is not None or rule.valid_until is not None):
                window = np.ones(len(batch), dtype=bool)
                if rule.valid_from is not None:
                    window &= t >= rule.valid_from
                if rule.valid_until is not None:
                    window &= t < rule.valid_until
                hit = hit & window
                err = err & window
            hits[rule.id] = hit
            errors[rule.id] = err
        return hits, errors, library_rows

    def evaluate(self, batch: RuleBatch, *, use_library: bool = False) -> Outcome:
        """Evaluate the rules in force over ``batch``: which rules hit which rows."""
        n = len(batch)
        hits, errors, library_rows = self.rule_hits(batch, use_library=use_library)
        none = np.zeros(n, dtype=bool)
        masks = {(a, m): none.copy() for a in ("decline", "review", "approve", "tag")
                 for m in ("active", "shadow")}  # fmt: skip
        rows: list[list[RuleHit]] = [[] for _ in range(n)]
        shadow_rows: list[list[RuleHit]] = [[] for _ in range(n)]
        counts: dict[tuple[str, str], int] = {}
        for c in self._order:
            hit = hits[c.rule.id]
            idx = np.flatnonzero(hit)
            counts[(c.rule.id, c.rule.mode)] = len(idx)
            if not len(idx):
                continue
            masks[(c.rule.action, c.rule.mode)] |= hit
            record = self._hit_of[c.rule.id]
            target = rows if c.rule.mode == "active" else shadow_rows
            for i in idx.tolist():
                target[i].append(record)
        model = np.asarray(batch.model_decision, dtype="<U7")
        out_hits: list[tuple[RuleHit, ...]] = [()] * n
        touched = np.flatnonzero(np.logical_or.reduce([m for m in masks.values()]))
        for i in touched.tolist():
            out_hits[i] = tuple(rows[i] + shadow_rows[i])
        return Outcome(
            model_decision=model, masks=masks, hits=out_hits, ruleset_version=self.version,
            counts=counts, errors={k: int(v.sum()) for k, v in errors.items() if v.any()},
            library_rows=library_rows,
        )  # fmt: skip

    # ---- snapshot --------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Plain bytes (msgpack) of every rule, list entry and applied offset."""
        return msgspec.msgpack.encode(
            _Snapshot(
                format=SNAPSHOT_FORMAT, feature_names=list(self.vocab.feature_names),
                rules=self.rules(), entries=self.lists.entries(), offsets=dict(self.offsets),
            )
        )  # fmt: skip

    @classmethod
    def restore(
        cls, data: bytes, feature_names: Sequence[str] | None = None
    ) -> RuleBook:
        """A book from :meth:`snapshot` bytes, compiled for ``feature_names`` (default: the spec).

        A rule that no longer compiles (the feature spec changed) stays out of
        force; :attr:`restore_refusals` lists why. Raises :class:`SnapshotError`
        for bytes that are not a snapshot.
        """
        try:
            snap = msgspec.msgpack.decode(data, type=_Snapshot)
        except msgspec.MsgspecError as exc:
            raise SnapshotError(
                f"not a rule book snapshot ({exc}); rebuild the book from the rules and lists "
                "topics (read both from offset 0)"
            ) from exc
        if snap.format != SNAPSHOT_FORMAT:
            raise SnapshotError(
                f"snapshot format {snap.format}, this code reads {SNAPSHOT_FORMAT}; rebuild the "
                "book from the rules and lists topics (read both from offset 0)"
            )
        book = cls(feature_names)
        for rule in snap.rules:
            result = book.put_rule(rule)
            if isinstance(result, Refused):
                book.restore_refusals.append(result)
                book._rules[rule.id] = rule  # kept (listed, snapshotted), not in force
        for entry in snap.entries:
            book.put_entry(entry)
        book.offsets = dict(snap.offsets)
        return book
