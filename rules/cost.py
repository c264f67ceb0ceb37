"""What a rule costs per transaction, judged when it is compiled: a static bound and a measurement.

CEL is non-Turing-complete, but not cheap by construction: a 638-character rule
of two nested ``exists`` over 99-element list literals runs 9,801 iterations per
transaction (about 4-9 ms here), and nested ``map`` with string concatenation
about 40-60 ms, within CEL's own limit of 10,000 iterations per evaluation. A
rule is therefore judged twice, when the publisher validates it (``just rules
validate``/``add``) and again when the flow applies its record (a record can be
written around the publisher):

1. **Static bound** (:func:`loop_bound`), from the checked tree (:mod:`rules.celast`):
   comprehension iterations per transaction, the sizes of the ranges multiplied
   along each nesting (a list literal's size is known; ``features`` has the spec's
   size; ``attributes`` and other ranges depend on the data and are left to the
   measurement and the stream's guard). Above :data:`MAX_ITERATIONS` the rule is
   refused, whatever it measures (it runs on one row only, to name its cost):
   deterministic, every worker agrees.
2. **Measurement** (:func:`measure`): the rule is evaluated, the way the stream
   would (numpy fast path or the library row by row), over a fixed reference
   batch (:func:`reference_batch`: :data:`REFERENCE_ROWS` deterministic rows that
   cover the vocabulary, one of them carrying 64 attributes), in thread CPU time
   (``time.thread_time``: other processes on the host do not inflate it), with
   the garbage collector off and the best of :data:`PASSES` passes (both as
   ``timeit`` does: a collection or a cold cache is not the rule's cost). A pass
   stops as soon as its CPU time passes ``budget x rows``, where the average over
   the batch is already over budget whatever the other rows cost; all passes
   together stop after :data:`MEASURE_WALL_S` of wall time. A rule over the static
   bound is run on one row only. So a hostile rule costs a few ms to refuse
   (passes of ``budget x rows`` plus a row, bounded by CEL's iteration limit),
   never seconds.

Why not a library: CEL's own answer is cel-go's cost model (``checker.CostEstimator``
for a static estimate, ``cel.CostLimit`` to stop an evaluation), which analysts'
other CEL systems (Kubernetes validation rules) use; the runtime we compile with,
``cel-expr-python`` 0.1 (cel-cpp), exposes neither (no evaluation options, no cost
tracker, no way to interrupt a call), so this module bounds loops from the checked
tree and measures, and the stream's guard (:mod:`rules.guard`) stops a rule between
rows. Running each evaluation in a subprocess with a timeout would cost far more
than the rules themselves.

A rule over the budget (:class:`CostBudget` ``row_us``, ``FRAUD_RULE_COST_US``) is
refused with ``rule_too_costly`` and a reason naming its cost and the budget.
Shapes and units: costs in µs of CPU per transaction (row); the budget per rule.
A rule is measured once per process (:func:`judge` keeps the answer), so the
merchant shards of a process agree; two processes can measure a rule that close
to the budget differently (one refuses, one applies it): each verdict's
``rule_set_version`` names exactly the rules that applied, and the refusal is
dead-lettered and counted.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Literal

import numpy as np

from rules import reference
from rules.batch import RuleBatch
from rules.celast import Call, Ident, ListLit, Loop, Node, Opaque, Select
from rules.lists import ListIndex
from rules.names import TEXT_FIELDS, Vocabulary
from rules.vector import Columns

if TYPE_CHECKING:
    from rules.compile import CompiledRule

#: Rows of the reference batch a rule is measured on.
REFERENCE_ROWS = 32
#: Most comprehension iterations per transaction the static bound lets through.
MAX_ITERATIONS = 1_000
#: Measurement passes; the best (lowest) counts.
PASSES = 3
#: Wall-clock cap on measuring one rule (all passes).
MEASURE_WALL_S = 0.5
#: Attributes on the reference batch's widest row (a loop over attributes shows there).
WIDE_ROW_ATTRIBUTES = 64

Path = Literal["vector", "library"]


@dataclass(frozen=True)
class CostBudget:
    """Limits on what rules may cost; the flow reads them from ``FRAUD_*`` (flows/settings.py).

    ``row_us``: most µs of CPU a rule may cost per transaction (``FRAUD_RULE_COST_US``),
    measured at compile and guarded in the stream; ``max_rules``: most enabled rules
    (active and shadow) in a rule book (``FRAUD_RULES_MAX``); ``overrun_batches``:
    consecutive scoring batches a rule may overrun before the stream disables it
    (``FRAUD_RULE_OVERRUN_BATCHES``, :mod:`rules.guard`); ``shadow_row_us``: µs per
    transaction all shadow rules of a batch may spend together, after the live
    rules (``FRAUD_SHADOW_RULES_COST_US``); ``max_list_entries``: most entries in one
    list (``FRAUD_LIST_MAX_ENTRIES``) and ``max_entries`` in all lists together
    (``FRAUD_LISTS_MAX_ENTRIES``): each process holds the lists in memory (one table
    shared by its merchant shards, :mod:`rules.list_table`) and reads them from the
    ``lists`` topic at every start, so they are bounded like the rules (README "Rules
    and lists" gives the memory and start-up time at the caps).
    """

    row_us: float = 50.0
    max_rules: int = 200
    overrun_batches: int = 3
    shadow_row_us: float = 50.0
    max_list_entries: int = 50_000
    max_entries: int = 100_000

    def __post_init__(self) -> None:
        if not (self.row_us > 0 and self.shadow_row_us > 0 and self.max_rules >= 1
                and self.overrun_batches >= 1 and self.max_list_entries >= 1
                and self.max_entries >= 1):
            raise ValueError(f"a cost budget needs positive limits, got {self}")


#: The defaults (what the flow uses when no ``FRAUD_RULE*`` variable is set).
DEFAULT_BUDGET = CostBudget()


@dataclass(frozen=True)
class LoopBound:
    """Static bound of a tree: comprehension ``iterations`` per row, deepest ``nesting``.

    ``iterations`` counts only ranges of known size; ``data_dependent`` says that
    some range (``attributes``, a computed list) depends on the transaction.
    """

    iterations: int
    nesting: int
    data_dependent: bool


@dataclass(frozen=True)
class RuleCost:
    """A rule's cost per transaction: ``row_us`` µs of CPU, measured over ``rows`` rows.

    ``path``: how the stream evaluates it; ``complete``: whether the best pass ran
    over the whole reference batch (False: it stopped once over budget, and
    ``row_us`` averages the rows it ran); ``bound``: the static loop bound.
    """

    row_us: float
    rows: int
    path: Path
    complete: bool
    bound: LoopBound

    def describe(self) -> str:
        """Analyst words, e.g. ``4,120 µs per transaction (row by row in the library, ...)``."""
        how = "vectorised" if self.path == "vector" else "row by row in the library"
        over = "" if self.complete else ", stopped early"
        text = (f"{self.row_us:,.1f} µs per transaction ({how}, measured on {self.rows} "
                f"reference row(s){over})")
        if self.bound.iterations:
            text += (f"; {self.bound.iterations:,} comprehension iterations per transaction, "
                     f"nested {self.bound.nesting} deep")
        return text


# ---- static bound ----------------------------------------------------------------------


def _children(node: Node) -> Iterator[Node]:
    if isinstance(node, Select):
        yield node.operand
    elif isinstance(node, Call):
        if node.target is not None:
            yield node.target
        yield from node.args
    elif isinstance(node, ListLit):
        yield from node.elements
    elif isinstance(node, Opaque) and node.loop is not None:
        loop = node.loop
        yield from (loop.iter_range, loop.accu_init, loop.loop_condition, loop.loop_step,
                    loop.result)


def _range_size(node: Node, vocab: Vocabulary) -> int | None:
    """Elements a comprehension range holds, when the tree alone says (None: data-dependent)."""
    if isinstance(node, ListLit):
        return len(node.elements)
    if isinstance(node, Ident) and node.name == "features":
        return len(vocab.feature_names)
    if isinstance(node, Call) and node.function == "_+_" and len(node.args) == 2:
        a, b = (_range_size(x, vocab) for x in node.args)
        return None if a is None or b is None else a + b
    if isinstance(node, Opaque) and node.loop is not None:
        return _range_size(node.loop.iter_range, vocab)  # map/filter: at most its range
    return None


def loop_bound(tree: Node, vocab: Vocabulary) -> LoopBound:
    """Comprehension iterations per transaction (ranges of known size multiplied by nesting).

    A loop of ``k`` elements costs ``k x (1 + iterations of its condition and step)``
    plus what its range, initial value and result cost; siblings add up.
    """
    data_dependent = False

    def visit(node: Node) -> tuple[int, int]:
        nonlocal data_dependent
        if isinstance(node, Opaque) and node.loop is not None:
            loop: Loop = node.loop
            size = _range_size(loop.iter_range, vocab)
            if size is None:
                data_dependent = True
                size = 0
            body, depth = (0, 0)
            for part in (loop.loop_condition, loop.loop_step):
                i, d = visit(part)
                body, depth = body + i, max(depth, d)
            outside = 0
            for part in (loop.iter_range, loop.accu_init, loop.result):
                i, d = visit(part)
                outside, depth = outside + i, max(depth, d - 1)
            return outside + size * (1 + body), depth + 1
        total, deepest = 0, 0
        for child in _children(node):
            i, d = visit(child)
            total, deepest = total + i, max(deepest, d)
        return total, deepest

    iterations, nesting = visit(tree)
    return LoopBound(iterations, nesting, data_dependent)


# ---- reference batch -------------------------------------------------------------------

_REFERENCE_T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
_TEXT_POOLS: dict[str, tuple[str, ...]] = {
    "currency": ("EUR", "USD", "JPY", "GBP", "VND"),
    "channel": ("pos", "ecom", "atm", "moto", ""),
    "entry_mode": ("chip", "contactless", "swipe", "manual", "ecom", ""),
    "country": ("FR", "DE", "US", "NG", "BR", "VN", ""),
    "mcc": ("5411", "5967", "6011", "7995", "4829", ""),
    "ip": ("203.0.113.7", "10.0.1.9", "2001:db8::1", "198.51.100.23", ""),
}
_AMOUNTS = (0.0, 0.01, 12.5, 99.99, 480.0, 4_800.0, 48_000.0, 2_600_000.0)
_ATTRIBUTES: tuple[dict[str, str | int | float | bool | None] | None, ...] = (
    None, {}, {"bin": "411111"}, {"k": 3, "flag": True, "ratio": 2.5, "note": "gift card"},
    {"card_bin": "52000012", "wallet": "apple_pay", "three_ds": None},
)


@cache
def reference_batch(vocab: Vocabulary) -> RuleBatch:
    """The fixed batch rules are measured on: :data:`REFERENCE_ROWS` rows, the same every time.

    Every text field with varied values (and ``""``), amounts from 0 to millions
    (``amount_reference`` NaN on the ``VND`` rows: unrated, ``amount_unrated`` true),
    attributes absent, empty, typical, and one row with :data:`WIDE_ROW_ATTRIBUTES`
    keys; features from a fixed pattern (float32 ``[n, F]``), scores 0-1, all three
    model decisions.
    """
    n = REFERENCE_ROWS
    text: dict[str, np.ndarray] = {}
    for name in TEXT_FIELDS:
        pool = _TEXT_POOLS.get(name) or tuple(f"{name.split('_')[0]}-ref-{i}" for i in range(7))
        text[name] = np.array([pool[i % len(pool)] for i in range(n)], dtype=object)
    attributes: list[dict[str, str | int | float | bool | None] | None] = [
        _ATTRIBUTES[i % len(_ATTRIBUTES)] for i in range(n)
    ]
    attributes[n // 2] = {f"a{j}": (j if j % 3 else f"v{j}") for j in range(WIDE_ROW_ATTRIBUTES)}
    width = len(vocab.feature_names)
    grid = (np.arange(n)[:, None] * 7 + np.arange(width)[None, :] * 3) % 11
    amount = np.array([_AMOUNTS[i % len(_AMOUNTS)] for i in range(n)], dtype=np.float64)
    # VND rows are unrated, as without a rates file: NaN reference amount, amount_unrated true
    unrated = text["currency"] == "VND"
    return RuleBatch(
        event_time=_REFERENCE_T0 + np.arange(n, dtype=np.int64) * 60_000,
        text=text,
        amount=amount,
        amount_reference=np.where(unrated, np.nan, amount * 0.9),
        attributes=attributes,
        features=(grid * 0.5).astype(np.float32),
        feature_names=vocab.feature_names,
        score=(np.arange(n) / (n - 1)).astype(np.float32),
        model_decision=np.array([("approve", "review", "decline")[i % 3] for i in range(n)],
                                dtype="<U7"),
    )


# ---- measurement -----------------------------------------------------------------------


def _vector_pass(compiled: CompiledRule, batch: RuleBatch, vocab: Vocabulary) -> float:
    assert compiled.fast is not None
    cols = Columns(batch, ListIndex(), vocab)
    started = time.thread_time()
    compiled.fast(cols)
    return time.thread_time() - started


def measure(compiled: CompiledRule, vocab: Vocabulary, budget: CostBudget,
            bound: LoopBound | None = None, passes: int = PASSES) -> RuleCost:
    """The rule's cost over :func:`reference_batch` (see the module docstring for the method)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _measure(compiled, vocab, budget, bound, passes)
    finally:
        if collecting:
            gc.enable()


def _measure(compiled: CompiledRule, vocab: Vocabulary, budget: CostBudget,
             bound: LoopBound | None, passes: int) -> RuleCost:
    batch = reference_batch(vocab)
    n = len(batch)
    bound = bound if bound is not None else loop_bound(compiled.tree, vocab)
    limit_s = budget.row_us * 1e-6 * n
    empty = ListIndex()
    deadline = time.perf_counter() + MEASURE_WALL_S
    best: RuleCost | None = None
    for _ in range(passes):
        if compiled.fast is not None:
            path: Path = "vector"
            seconds, rows, complete = _vector_pass(compiled, batch, vocab), n, True
        else:
            path = "library"
            started = time.thread_time()
            try:
                reference.evaluate(compiled, batch, vocab, empty.member, cpu_limit_s=limit_s)
                seconds, rows, complete = time.thread_time() - started, n, True
            except reference.RowBudgetSpent as spent:
                seconds, rows, complete = spent.seconds, spent.rows, False
        cost = RuleCost(seconds / rows * 1e6, rows, path, complete, bound)
        if best is None or cost.row_us < best.row_us:
            best = cost
        if time.perf_counter() > deadline:
            break
    assert best is not None
    return best


#: Judgements of this process by (expression, feature names, budget): measured once, so
#: every merchant shard of a process (and a restart from a snapshot) agrees on a rule.
_JUDGED: dict[tuple[str, tuple[str, ...], float], tuple[RuleCost, str | None]] = {}
_JUDGED_MAX = 4_096


def judge(
    compiled: CompiledRule, vocab: Vocabulary, budget: CostBudget
) -> tuple[RuleCost, str | None]:
    """``(cost, problem)``: the rule's measured cost and why it is refused (None: within budget).

    A rule over the static bound is measured on one pass only (its first row already
    says enough) and refused whatever the measurement says. The answer is kept for the
    process (by expression, feature spec and budget), so shards of one process agree.
    """
    key = (compiled.rule.expression, vocab.feature_names, budget.row_us)
    found = _JUDGED.get(key)
    if found is None:
        found = _judge(compiled, vocab, budget)
        if len(_JUDGED) >= _JUDGED_MAX:
            _JUDGED.clear()
        _JUDGED[key] = found
    return found


def _judge(
    compiled: CompiledRule, vocab: Vocabulary, budget: CostBudget
) -> tuple[RuleCost, str | None]:
    bound = loop_bound(compiled.tree, vocab)
    static_over = bound.iterations > MAX_ITERATIONS
    if static_over:
        cost = measure(compiled, vocab, _one_row(budget), bound, passes=1)
    else:
        cost = measure(compiled, vocab, budget, bound)
    if static_over:
        return cost, (
            f"too costly: {cost.describe()}; at most {MAX_ITERATIONS:,} comprehension "
            f"iterations and {_us(budget.row_us)} per transaction (FRAUD_RULE_COST_US). "
            "Replace nested comprehensions over literal lists with `x in [..]` tests or a list "
            "(`x in lists.<name>`)"
        )
    if cost.row_us > budget.row_us:
        return cost, (
            f"too costly: {cost.describe()}; the budget is {_us(budget.row_us)} per transaction "
            "(FRAUD_RULE_COST_US). Simplify it (rules the fast path vectorises cost about 1 µs: "
            "see rules/vector.py), or raise the budget for every worker and the publisher"
        )
    return cost, None


def _one_row(budget: CostBudget) -> CostBudget:
    """A budget that stops the measurement after the first row (for statically refused rules)."""
    tiny = math.ulp(1.0)
    return CostBudget(row_us=tiny, max_rules=budget.max_rules,
                      overrun_batches=budget.overrun_batches, shadow_row_us=budget.shadow_row_us)


def _us(value: float) -> str:
    return f"{value:,.0f} µs" if value >= 10 else f"{value:g} µs"
