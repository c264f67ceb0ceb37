"""The rule book: rules and lists in force, fed by the ``rules`` and ``lists`` topics.

This is the one object the flow holds per merchant shard; the lists are not its
own but the process's :class:`~rules.list_table.ListTable`, shared by every book of
the process (a book made alone gets a private one). It

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
- **bounds what rules cost** (``budget``, :class:`~rules.cost.CostBudget`): a rule
  over the per-transaction budget (measured when compiled, :mod:`rules.cost`) or
  beyond the cap on rules in force is refused; in the stream, live rules run
  before shadow rules, which share a budget of their own, and a rule that
  overruns is disabled by the guard (:mod:`rules.guard`; what that means for
  verdicts: :meth:`RuleBook.evaluate`);
- has a **version**, a deterministic id of the rule versions in force and the
  list entries (the same messages give the same version on every worker), and
  (version, event time) fixes what applied to a transaction;
- is **snapshotted** to bytes and **restored** (for the flow's recovery state): its
  rules, their approvals and the offsets, never the list entries (the table is
  loaded from the ``lists`` topic, :mod:`flows.list_loader`).

>>> import tempfile
>>> from rules.signing import dev_keys, sign_record
>>> keys = dev_keys(tempfile.mkdtemp())
>>> book = RuleBook(("card_count_10m", "amount"), TrustedKeys.from_file(keys.trusted))
>>> entry = ListEntry(list="blocked_cards", kind="card_id", value="c1")
>>> book.apply(Message("lists", "blocked_cards/c1", sign_record(entry, [keys.maker]))).change
'added'
>>> rule = Rule(id="r1", version=1, description="blocked card", owner="fraud-ops",
...             expression="card_id in lists.blocked_cards", action="decline")
>>> book.apply(Message("rules", "r1", sign_record(rule, [keys.maker]))).change
'added'
>>> unsigned = book.apply(Message("rules", "r1", b'{"id":"r1","version":2,"description":"x",'
...     b'"owner":"fraud-ops","expression":"false","action":"decline"}'))
>>> unsigned.error_class
'rule_unauthenticated'
>>> allow = Rule(id="vip", version=1, description="vip", owner="fraud-ops",
...              expression="amount >= 0.0", action="approve")
>>> book.apply(Message("rules", "vip", sign_record(allow, [keys.maker]))).change
'pending'
>>> book.apply(Message("rules", "vip", sign_record(allow, [keys.maker, keys.checker]))).change
'added'
>>> RuleBook.restore(book.snapshot(), table=book.table).version == book.version
True
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import msgspec
import numpy as np

from rules import reference
from rules.approval import (
    Authorised,
    Pending,
    Unauthenticated,
    Waiting,
    authorise,
    rule_loosens,
)
from rules.batch import RuleBatch
from rules.compile import CompiledRule, Refusal, RuleCompiler
from rules.contracts import ContractError, ListEntry, Rule, RuleHit, decode_json, rule_from_obj
from rules.cost import CostBudget
from rules.errors import SnapshotError
from rules.guard import Disabled, RuleGuard
from rules.list_table import _MASK, Applied, Change, ListTable, Message, Refused, Topic
from rules.list_table import digest as _digest
from rules.lists import ListIndex, in_force
from rules.names import Vocabulary, vocabulary
from rules.signing import TrustedKeys, split_signed
from rules.vector import Columns
from topics.contracts import ReasonCode

__all__ = ["Applied", "Change", "ListTable", "Message", "Outcome", "Refused", "RuleBook",
           "SNAPSHOT_FORMAT", "Topic"]
#: 2: no list entries (the process's table is loaded from the ``lists`` topic); 1 held them.
SNAPSHOT_FORMAT = 2
_OLDER_FORMATS = (1,)


@dataclass
class Outcome:
    """Which rules hit which rows of one batch (``n`` rows).

    ``model_decision``: ``<U7 [n]``; ``masks[(action, mode)]``: bool ``[n]``, the
    rows an ``action`` rule in ``mode`` (``active``/``shadow``) hit; ``hits[i]``: the
    rule hits of row ``i``, active first, then by priority and id; ``counts``:
    ``(rule_id, mode) -> hits`` and ``errors``: ``rule_id -> rows whose
    evaluation failed`` (both for metrics); ``library_rows``: rule-rows the
    library evaluated row by row (the fast path's misses); ``disabled``: rules the
    cost guard took out of force in this batch (they took no part in it, and
    ``ruleset_version`` is the version without them); ``shadow_skipped``: shadow
    rules not evaluated in this batch because its shadow budget was spent.
    """

    model_decision: np.ndarray
    masks: dict[tuple[str, str], np.ndarray]
    hits: list[tuple[RuleHit, ...]]
    ruleset_version: str
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    library_rows: int = 0
    disabled: list[Disabled] = field(default_factory=list)
    shadow_skipped: list[str] = field(default_factory=list)

    def reasons(self, i: int) -> list[ReasonCode]:
        """Row ``i``'s hits as reason codes (``feature = "rule:<id>"``, text = description)."""
        return [
            ReasonCode(
                feature=f"rule:{h.rule_id}",
                text=h.text if h.mode == "active" else f"[shadow] {h.text}",
            )
            for h in self.hits[i]
        ]


@dataclass
class _Run:
    """One evaluation of the rules over a batch (:meth:`RuleBook._run`)."""

    hits: dict[str, np.ndarray]
    errors: dict[str, np.ndarray]
    library_rows: int
    disabled: list[Disabled]
    shadow_skipped: list[str]


def _text(key: bytes | str | None) -> str | None:
    if key is None:
        return None
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else key


class _Snapshot(msgspec.Struct, kw_only=True):
    format: int
    feature_names: list[str]
    rules: list[Rule]
    offsets: dict[str, int]
    #: Format 1 only (ignored when restored: the ``lists`` topic is the source).
    entries: list[ListEntry] = []
    pending: list[Pending] = []
    signers: dict[str, list[str]] = {}
    #: Rules the cost guard disabled: id -> the disabled version.
    disabled: dict[str, int] = {}


class RuleBook:
    """Rules and lists in force, compiled for one feature spec (``state.spec`` by default).

    ``trust``: the analysts whose signed ``rules``/``lists`` records :meth:`apply`
    accepts (:mod:`rules.approval`); none (the default) refuses every record.
    :meth:`put_rule`/:meth:`put_entry` take already-checked content (files, snapshots).
    ``budget``: the cost limits (default :data:`rules.cost.DEFAULT_BUDGET`; the flow
    passes ``ScoringSettings.rule_budget``), applied to every rule, checked or not.
    ``table``: the process's lists, shared with the other books of the process (the
    flow passes one, :mod:`flows.score`); by default a private one.
    """

    def __init__(
        self, feature_names: Sequence[str] | None = None, trust: TrustedKeys | None = None,
        *, budget: CostBudget | None = None, table: ListTable | None = None,
    ) -> None:
        self.vocab: Vocabulary = vocabulary(feature_names)
        #: Cost limits (``FRAUD_RULE_COST_US``, ``FRAUD_RULES_MAX``, ...; :mod:`rules.cost`).
        self.budget = budget if budget is not None else CostBudget()
        self.guard = RuleGuard(self.budget)
        self._batches = 0
        self._compiler = RuleCompiler(self.vocab, self.budget)
        self._rules: dict[str, Rule] = {}
        self._compiled: dict[str, CompiledRule] = {}
        self._order: list[CompiledRule] = []
        self._hit_of: dict[str, RuleHit] = {}
        #: The lists (entries, offset, approvals, signers): the process's, or a private one.
        self.table = table if table is not None else ListTable()
        self._rule_sum = 0
        self._rule_offset = -1
        self.trust = trust if trust is not None else TrustedKeys()
        self._pending: dict[tuple[str, str], Pending] = {}
        self._signers: dict[str, tuple[str, ...]] = {}
        #: Rules of a restored snapshot that no longer compile (kept, out of force).
        self.restore_refusals: list[Refused] = []

    # ---- state -----------------------------------------------------------------------------

    @property
    def version(self) -> str:
        """Deterministic id of the enabled rule versions and list entries (``rs-`` + 12 hex)."""
        both = self._rule_sum.to_bytes(8, "big") + self.table.digest.to_bytes(8, "big")
        return "rs-" + hashlib.blake2b(both, digest_size=6).hexdigest()

    @property
    def lists(self) -> ListIndex:
        """The list entries in force (the table's index, shared in the flow)."""
        return self.table.index

    @property
    def offsets(self) -> dict[str, int]:
        """The last applied offset of each topic (a copy; ``lists``: the table's)."""
        out = {"rules": self._rule_offset} if self._rule_offset >= 0 else {}
        if self.table.offset >= 0:
            out["lists"] = self.table.offset
        return out

    @property
    def pending(self) -> dict[tuple[str, str], Pending]:
        """Signed loosening changes waiting for a second analyst, by (topic, key) (a copy)."""
        return {**self._pending, **self.table.pending}

    @property
    def signers(self) -> dict[str, tuple[str, ...]]:
        """Who signed what is in force: ``"<topic>:<key>"`` -> analysts, author first (a copy)."""
        return {**self._signers, **self.table.signers}

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
        with self.table.lock:
            entries = self.lists.entries()
        return rules, [e for e in entries if in_force(e, t)]

    # ---- apply -----------------------------------------------------------------------------

    def apply(self, message: Message) -> Applied | Refused:
        """Apply one record of ``rules`` or ``lists``; never raises on bad content."""
        key = _text(message.key)
        if message.topic != "rules":  # once per process, in the table (rules.list_table)
            return self.table.apply(key, message.value, message.offset, self)
        if message.offset is not None and message.offset <= self._rule_offset:
            return Applied(message.topic, key or "", "replayed")
        result = self._apply_rule(key, message.value)
        if message.offset is not None:
            self._rule_offset = message.offset
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
            return Refused("rules", key, "rule_unauthenticated",
                           f"rule {key!r}: a tombstone cannot carry a signature and is refused "
                           "(the rule stays as it was); retire a rule with a signed record: "
                           f"`just rules delete {key}`")  # fmt: skip
        try:
            content, signatures, retired = split_signed(decode_json(value))
            rule = rule_from_obj(content)
        except ContractError as exc:
            return Refused("rules", key, "rule_invalid", f"rule {key!r}: {exc}")
        if rule.id != key or retired:
            return Refused("rules", key, "rule_invalid",
                           f"record key {key!r} differs from the rule id {rule.id!r}; "
                           "publish with the rule id as key" if rule.id != key else
                           f"rule {key!r}: a rule is retired by a version with enabled: false "
                           "(`just rules delete`), not `retired`")  # fmt: skip
        current = self._rules.get(key)
        newer = current is None or rule.version > current.version
        decision = authorise(self.trust, "rules", key, rule, signatures, "put",
                             rule_loosens(current, rule) if newer else None)
        if isinstance(decision, Unauthenticated):
            return Refused("rules", key, decision.error_class, decision.reason)
        if isinstance(decision, Waiting):
            if newer:
                self._pending[("rules", key)] = decision.pending
            return Applied("rules", key, "pending" if newer else "stale")
        result = self.put_rule(rule)
        self._authorised("rules", key, decision, result,
                         lambda p: p.rule is not None and p.rule.version <= rule.version)
        return result

    def _authorised(self, topic: Topic, key: str, decision: Authorised,
                    result: Applied | Refused, settles: Callable[[Pending], bool]) -> None:
        if isinstance(result, Applied) and result.change in ("added", "updated", "removed"):
            self._signers[f"{topic}:{key}"] = decision.signers
            waiting = self._pending.get((topic, key))
            if waiting is not None and settles(waiting):
                del self._pending[(topic, key)]

    def list_users(self) -> tuple[set[str], set[str]]:
        """Lists named by active approve rules, and by active decline/review rules."""
        allow: set[str] = set()
        block: set[str] = set()
        for c in self._order:
            if c.rule.mode != "active" or c.rule.action == "tag":
                continue
            names = set(c.list_operands)
            if c.variables is None:  # hidden parts (comprehensions) may name any list
                names |= set(self.lists.names())
            (allow if c.rule.action == "approve" else block).update(names)
        return allow, block

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
            if rule.id not in self._compiled and len(self._compiled) >= self.budget.max_rules:
                return Refused("rules", rule.id, "too_many_rules",
                               f"rule {rule.id!r} v{rule.version}: {len(self._compiled)} rules "
                               f"are in force, the most a rule book holds (FRAUD_RULES_MAX="
                               f"{self.budget.max_rules}); disable or delete one first, or "
                               "merge rules (`x in lists.<name>` replaces one rule per value)")
            result = self._compiler.compile(rule)  # also measures its cost (rules.cost)
            if isinstance(result, Refusal):
                return Refused("rules", rule.id, result.error_class, result.reason)
            compiled = result
        self._rules[rule.id] = rule
        self.guard.forget(rule.id)  # a new version is measured again, with a clean record
        self._set_compiled(rule.id, compiled)
        return Applied("rules", rule.id, "added" if current is None else "updated")

    def put_entry(self, entry: ListEntry) -> Applied:
        """Add or replace a decoded list entry (in the table: every book sharing it sees it)."""
        return self.table.put_entry(entry)

    def _list_full(self, name: str) -> str | None:
        """Why list ``name`` takes no new entry (its cap or the cap of all lists), or None."""
        return self.table.list_full(name, self.budget)

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
        run = self._run(batch, use_library=use_library, honour_validity=honour_validity,
                        guarded=False)
        return run.hits, run.errors, run.library_rows

    def _run(self, batch: RuleBatch, *, use_library: bool, honour_validity: bool,
             guarded: bool) -> _Run:
        """Evaluate the enabled rules; ``guarded``: under the cost guard and the shadow budget.

        Guarded (the stream), the live (``active``) rules run first, then the shadow
        rules, from a starting point that rotates per batch; a shadow rule starts only
        while the batch's shadow budget (``shadow_row_us`` per row) is not spent, else
        it is skipped (counted in ``shadow_skipped``). Each rule's time goes to the
        guard (:mod:`rules.guard`); a rule it disables takes no part in this batch. The
        table's lock is held throughout (another worker thread may apply a list record).
        """
        with self.table.lock:
            return self._run_locked(batch, use_library=use_library,
                                    honour_validity=honour_validity, guarded=guarded)

    def _run_locked(self, batch: RuleBatch, *, use_library: bool, honour_validity: bool,
                    guarded: bool) -> _Run:
        if batch.feature_names != self.vocab.feature_names:
            raise ValueError(
                "the batch's feature names differ from the rule book's feature spec; build "
                "the book with the running spec (RuleBook(feature_names=...))"
            )
        n = len(batch)
        cols = Columns(batch, self.lists, self.vocab)
        run = _Run({}, {}, 0, [], [])
        t = batch.event_time
        order = self._order
        shadow_left = float("inf")
        overrun_s = self.guard.overrun_s(n)
        stop_floor_s, stop_row_s = self.guard.stop_rate()
        if guarded:
            live = [c for c in order if c.rule.mode == "active"]
            shadow = [c for c in order if c.rule.mode != "active"]
            if shadow:
                k = self._batches % len(shadow)
                shadow = shadow[k:] + shadow[:k]
            self._batches += 1
            order = live + shadow
            shadow_left = self.budget.shadow_row_us * 1e-6 * max(n, 1)
        for c in order:
            rule = c.rule
            is_shadow = rule.mode != "active"
            if guarded and is_shadow and shadow_left <= 0:
                run.shadow_skipped.append(rule.id)
                continue
            library = c.fast is None or use_library
            if not guarded:
                if library:
                    hit, err = reference.evaluate(c, batch, self.vocab, self.lists.member)
                else:
                    hit, err = c.fast(cols)  # type: ignore[misc]  # not None: not library
            else:
                clock = time.thread_time if library else time.perf_counter
                started = clock()
                try:
                    if library:
                        hit, err = reference.evaluate(c, batch, self.vocab, self.lists.member,
                                                      cpu_limit_s=stop_floor_s,
                                                      cpu_limit_per_row_s=stop_row_s)
                    else:
                        hit, err = c.fast(cols)  # type: ignore[misc]  # not None: not library
                    seconds = clock() - started
                    verdict = (self.guard.observe(rule.id, rule.version, seconds, n)
                               if seconds > overrun_s or self.guard.is_counting else None)
                except reference.RowBudgetSpent as spent:
                    seconds = spent.seconds
                    verdict = self.guard.stopped(rule.id, rule.version, seconds, spent.rows, n)
                if is_shadow:
                    shadow_left -= seconds
                if verdict is not None:
                    run.disabled.append(verdict)
                    continue
            if library:
                run.library_rows += n
            if honour_validity and (rule.valid_from is not None or rule.valid_until is not None):
                window = np.ones(n, dtype=bool)
                if rule.valid_from is not None:
                    window &= t >= rule.valid_from
                if rule.valid_until is not None:
                    window &= t < rule.valid_until
                hit = hit & window
                err = err & window
            run.hits[rule.id] = hit
            run.errors[rule.id] = err
        for gone in run.disabled:  # out of force from now on: the version as if absent
            self._set_compiled(gone.rule_id, None)
        return run

    def evaluate(self, batch: RuleBatch, *, use_library: bool = False) -> Outcome:
        """Evaluate the rules in force over ``batch``: which rules hit which rows.

        In the stream (``use_library=False``) this runs under the cost guard
        (:mod:`rules.guard`) and the shadow budget (:meth:`_run`). **A rule the guard
        disables** is out of force from the batch in which it is disabled: it takes no
        part in that batch's verdicts or any later one, exactly as if it were absent,
        and the ``ruleset_version`` stamped on those verdicts is the version of the
        book without it (the version is a function of the rules in force), so a
        verdict always names the rule set that decided it. Which batch a rule is
        disabled in depends on timing (and may differ between shards); it is counted
        in ``Outcome.disabled`` for the metric, log and alert, and stays disabled
        (across restarts too) until a new version of the rule is applied. Skipped
        shadow rules change no decision: only their hits are missing from that batch.
        """
        n = len(batch)
        run = self._run(batch, use_library=use_library, honour_validity=True,
                        guarded=not use_library)
        hits, errors, library_rows = run.hits, run.errors, run.library_rows
        none = np.zeros(n, dtype=bool)
        masks = {(a, m): none.copy() for a in ("decline", "review", "approve", "tag")
                 for m in ("active", "shadow")}  # fmt: skip
        rows: list[list[RuleHit]] = [[] for _ in range(n)]
        shadow_rows: list[list[RuleHit]] = [[] for _ in range(n)]
        counts: dict[tuple[str, str], int] = {}
        for c in self._order:
            hit = hits.get(c.rule.id)
            if hit is None:  # a shadow rule skipped for the shadow budget
                continue
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
            library_rows=library_rows, disabled=run.disabled, shadow_skipped=run.shadow_skipped,
        )  # fmt: skip

    # ---- snapshot --------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Plain bytes (msgpack) of every rule, its approvals and the applied offsets.

        No list entry, list approval or list signer: those are the table's, loaded from
        the ``lists`` topic (so the snapshot does not grow with the lists).
        """
        return msgspec.msgpack.encode(
            _Snapshot(
                format=SNAPSHOT_FORMAT, feature_names=list(self.vocab.feature_names),
                rules=self.rules(), offsets=self.offsets,
                pending=[self._pending[k] for k in sorted(self._pending)],
                signers={k: list(v) for k, v in sorted(self._signers.items())},
                disabled={k: d.version for k, d in sorted(self.guard.disabled.items())},
            )
        )  # fmt: skip

    @classmethod
    def restore(
        cls, data: bytes, feature_names: Sequence[str] | None = None,
        trust: TrustedKeys | None = None, *, budget: CostBudget | None = None,
        table: ListTable | None = None,
    ) -> RuleBook:
        """A book from :meth:`snapshot` bytes, compiled for ``feature_names`` (default: the spec).

        Rules are compiled (and their cost judged) again under ``budget``; a rule the
        cost guard had disabled stays disabled. The lists are ``table``'s (the flow's,
        loaded from the ``lists`` topic; by default a new, empty one that reads the
        topic from offset 0): the snapshot's ``lists`` offset is not restored. A
        snapshot of format 1 (it held the list entries) is restored the same way, its
        entries, list approvals and list signers ignored: the topic is their source.

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
        if snap.format != SNAPSHOT_FORMAT and snap.format not in _OLDER_FORMATS:
            raise SnapshotError(
                f"snapshot format {snap.format}, this code reads {SNAPSHOT_FORMAT}; rebuild the "
                "book from the rules and lists topics (read both from offset 0)"
            )
        book = cls(feature_names, trust, budget=budget, table=table)
        for rule in snap.rules:
            result = book.put_rule(rule)
            if isinstance(result, Refused):
                book.restore_refusals.append(result)
                book._rules[rule.id] = rule  # kept (listed, snapshotted), not in force
        for rule_id, version in snap.disabled.items():
            if rule_id in book._compiled and book._rules[rule_id].version == version:
                book.guard.restore(rule_id, version)
                book._set_compiled(rule_id, None)
        book._rule_offset = snap.offsets.get("rules", -1)
        book._pending = {(p.topic, p.key): p for p in snap.pending if p.topic == "rules"}
        book._signers = {k: tuple(v) for k, v in snap.signers.items() if k.startswith("rules:")}
        return book
